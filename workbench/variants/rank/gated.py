"""The shared form of the rank-allocation variants: ΔW = s · B diag(g) A.

SoRA's gate, AdaLoRA's singular values Λ (PΛQ), IncreLoRA's e and Bayesian-LoRA's gated λ are all a vector g
between B ∈ R^{out×r} and A ∈ R^{r×in}; a rank is *active* when its g is non-zero. The layer computes the adapter
path through the r-dimensional bottleneck, ((x Aᵀ) ⊙ g·s) Bᵀ, reports ``gates`` and ``rank`` to the probes, and
can change r while training (growth, pruning), so it resizes itself to a saved state when loading.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...variant import VariantLayer


class GatedLowRankLayer(VariantLayer):
    """ΔW = scaling · B diag(gate) A. Subclasses initialise the tensors and define ``scaling``."""

    def __init__(self, base: nn.Linear, config, shared=None, name: str = "", r: int | None = None):
        super().__init__(base, config, shared, name)
        r = config.r if r is None else r
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.zeros(r, base.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=dev, dtype=dt))
        self.gate = nn.Parameter(torch.zeros(r, device=dev, dtype=dt))

    @property
    def r(self) -> int:
        return self.gate.shape[0]

    @property
    def scaling(self) -> float:
        raise NotImplementedError

    def effective_gate(self) -> torch.Tensor:
        """The vector between B and A (AdaLoRA and Bayesian-LoRA mask or sample it)."""
        return self.gate

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A) * (self.effective_gate() * self.scaling), self.lora_B)

    def factors(self):
        return self.lora_B * (self.effective_gate() * self.scaling), self.lora_A

    def active(self) -> torch.Tensor:
        return self.effective_gate().detach() != 0

    def inspect(self):
        g = self.effective_gate().detach()
        return {"gates": g.clone(), "rank": self.active().sum().float()}

    def resize(self, r: int) -> None:
        """Give A, B and the gate ``r`` ranks (new entries zero); used when loading a grown or pruned adapter."""
        for name, dim in (("lora_A", 0), ("lora_B", 1), ("gate", 0)):
            old = getattr(self, name)
            shape = list(old.shape)
            shape[dim] = r
            new = torch.zeros(shape, device=old.device, dtype=old.dtype)
            keep = min(r, old.shape[dim])
            new.narrow(dim, 0, keep).copy_(old.detach().narrow(dim, 0, keep))
            setattr(self, name, nn.Parameter(new, requires_grad=old.requires_grad))

    def load_adapter_state(self, state):
        if "gate" in state and state["gate"].shape[0] != self.r:
            self.resize(state["gate"].shape[0])
        super().load_adapter_state(state)


def replace_parameter(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter,
                      grow_dim: int | None = None) -> None:
    """Swap ``old`` for ``new`` in ``optimizer``. With ``grow_dim``, ``new`` extends ``old`` along that dim and
    the optimizer's per-entry moments are carried over for the old entries (new entries start at zero)."""
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if not state or grow_dim is None:
        return
    carried = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == old.shape:
            grown = torch.zeros_like(new)
            grown.narrow(grow_dim, 0, value.shape[grow_dim]).copy_(value)
            carried[key] = grown
        else:
            carried[key] = value
    optimizer.state[new] = carried


def with_gate_group(adaptation, gates: list[nn.Parameter], lr: float, weight_decay: float,
                    rest_weight_decay: float | None = None) -> list[dict]:
    """Optimizer groups: everything else, and the gates on their own (no weight decay, named ``"gates"``) so that a
    proximal step can read the gates' current learning rate."""
    ids = {id(g) for g in gates}
    rest = [p for p in adaptation.parameters() if p.requires_grad and id(p) not in ids]
    rest_decay = weight_decay if rest_weight_decay is None else rest_weight_decay
    return [{"params": rest, "lr": lr, "weight_decay": rest_decay},
            {"params": gates, "lr": lr, "weight_decay": 0.0, "name": "gates"}]


SHRINKS = ("soft", "three-mask")


def shrink_(gates: list[torch.Tensor], threshold: float, form: str = "soft") -> None:
    """Shrink trainable gates in place by ``threshold`` = ξ.

    * ``"soft"``: the proximal operator of ξ‖g‖₁, g ← sign(g)·max(|g| − ξ, 0) (SoRA's Eq. (6)–(7)).
    * ``"three-mask"``: the released SoRA and CoDyRA code, three in-place masked updates in sequence,
      g[g > ξ] −= ξ; g[g < −ξ] += ξ; g[|g| < ξ] = 0. The last mask re-tests the already shifted values, so every g
      with ξ < |g| < 2ξ is zeroed too: a dead zone of 2ξ (|g| ≥ 2ξ still loses ξ, and |g| = ξ exactly is kept).
    """
    if form not in SHRINKS:
        raise ValueError(f"shrink: form={form!r} is invalid; form must be one of {SHRINKS}")
    with torch.no_grad():
        for g in gates:
            if not g.requires_grad:
                continue
            if form == "soft":
                g.copy_(torch.sign(g) * torch.clamp(g.abs() - threshold, min=0))
            else:
                g[g > threshold] -= threshold
                g[g < -threshold] += threshold
                g[g.abs() < threshold] = 0.0


def soft_threshold_(gates: list[torch.Tensor], optimizer: torch.optim.Optimizer, strength: float,
                    form: str = "soft") -> None:
    """The proximal step of strength·‖g‖₁ with threshold η·strength, η the gates' learning rate (``form``: see
    :func:`shrink_`)."""
    group = next((g for g in optimizer.param_groups if g.get("name") == "gates"), optimizer.param_groups[0])
    shrink_(gates, group["lr"] * strength, form)
