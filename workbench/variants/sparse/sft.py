"""LT-SFT: Lottery-Ticket Sparse Fine-Tuning, the sparse masks that Litschko, Vulić & Glavaš compose.

Ansell, Ponti, Korhonen & Vulić, ACL 2022, "Composable Sparse Fine-Tuning for Cross-Lingual Transfer",
arXiv:2110.07560 (official code: cambridgeltl/composable-sft, ``lt_sft.py``, ``trainer.py``), used for neural
reranking by Litschko, Vulić & Glavaš, COLING 2022 (../shared/METHODS.md Part B §13). The fine-tuned weights are
θ = θ0 + φ with φ sparse, found in two phases inside the one training loop:

1. *Full fine-tuning* of every target weight (a dense ΔW per target, as the ``full`` variant) with the L1 pull
   toward θ0 that the paper adds to the loss (§3, λ = 0.1 in the scripts): λ · Σ|θ − θ0| / N, N the number of
   maskable entries (the code divides by the model's parameter count; here the targets are the model).
2. *Selection*: the K entries with the largest |θ1 − θ0| **globally** over all targets (``torch.topk`` over the
   concatenated |ΔW|, so exactly K are kept even when values tie; the code's ``>= threshold`` may keep more).
3. *Reset* to θ0: every kept entry starts phase 2 at zero, with fresh optimizer moments (the code sets
   ``optimizer = None``).
4. *Sparse fine-tuning* of the kept entries only. The code multiplies the dense gradient by the mask; here phase 2
   trains the K values themselves (``values``, scattered onto W0 by ``index_add``), whose gradient is exactly the
   masked full-weight gradient G ⊙ M, so AdamW moves the same entries the same way while ``num_trainable()`` is K
   (the paper's #params) and the saved state is the K flat indices (int32) and values, never a dense mask.

Phases 1–4 run through the variant hooks: :meth:`SFT.regularizer` adds the L1 term in phase 1, and
:meth:`SFT.on_step` selects the mask after step ``round(phase1 · T)`` of the run (``phase1`` is the fraction of the
run spent on full fine-tuning; the code runs two separate trainings of set lengths). ``k`` is the global budget;
``density`` (the code's ``ft_params_proportion``, default 0.01) gives K = round(density · N) when ``k`` is not set.

Composition (θ = θ0 + φ_a + φ_b) is ``workbench.compose``: an SFT's ``update()`` is its sparse ΔW.

Simplified or not confirmed: one selection round (the code's ``n_ft_iterations`` default, 1); the learning-rate
schedule runs across both phases instead of restarting for phase 2; no L1 term in phase 2 (the code's
``sparse_l1_reg`` defaults to 0); only target weights are maskable (biases, LayerNorms and heads stay frozen unless
given as ``modules_to_save``). Before the mask is chosen the variant *is* full fine-tuning: ``num_trainable()`` is
Σ d_out·d_in then, K after; budget matching (``compare(budget=...)``) therefore does not size it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import ConfigError
from ...variant import DenseDeltaLayer, Variant, VariantConfig, param, register
from ..rank.gated import replace_parameter

PAPER = ("Ansell et al., 2022, Composable Sparse Fine-Tuning for Cross-Lingual Transfer, ACL 2022, "
         "arXiv:2110.07560; composed in Litschko, Vulić & Glavaš, COLING 2022")


@dataclass
class SFTConfig(VariantConfig):
    k: int | None = param(None, low=1, help="global budget K: entries of all targets kept for sparse fine-tuning; "
                                            "none: round(density × entries)")
    density: float = param(0.01, low=0.0, high=1.0, low_open=True,
                           help="K as a fraction of the targets' entries when k is not set (the code's "
                                "ft_params_proportion, 0.01)")
    phase1: float = param(0.5, low=0.0, high=0.95, low_open=True,
                          help="fraction of the run's steps spent on full fine-tuning before the mask is chosen")
    l1: float = param(0.1, low=0.0, help="λ of the phase-1 L1 pull toward θ0, λ·Σ|θ − θ0|/N (the scripts' 0.1)")

    def budget(self, shapes) -> int:
        """K on targets of ``shapes``: ``k``, else round(density · N), at least 1."""
        total = sum(o * i for o, i in shapes.values())
        return self.k if self.k is not None else max(1, round(self.density * total))

    def check(self, shapes):
        total = sum(o * i for o, i in shapes.values())
        if shapes and self.k is not None and self.k > total:
            raise ConfigError(f"{self.owner}: k={self.k} is invalid; k must be an integer in [1, {total}], the "
                              f"entries of the {len(shapes)} target layer(s)")


class SFTLayer(DenseDeltaLayer):
    """Phase 1: a dense trainable ΔW (``delta``). Phase 2 (after :meth:`sparsify`): the flat indices ``index`` of
    the kept entries and their trainable ``values``; ΔW = scatter(values at index)."""

    def __init__(self, base: nn.Linear, config: SFTConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        self.delta: nn.Parameter | None = nn.Parameter(torch.zeros_like(base.weight))
        self.values: nn.Parameter | None = None
        self.index: torch.Tensor | None = None

    @property
    def sparse(self) -> bool:
        return self.index is not None

    def delta_weight(self) -> torch.Tensor:
        if not self.sparse:
            return self.delta
        flat = torch.zeros(self.base.weight.numel(), dtype=self.values.dtype, device=self.values.device)
        return flat.index_add(0, self.index, self.values).view_as(self.base.weight)

    def effective_weight(self) -> torch.Tensor:
        if not self.sparse:
            return self.base.weight + self.delta
        w = self.base.weight
        return w.reshape(-1).index_add(0, self.index, self.values.to(w.dtype)).view_as(w)

    def mask(self) -> torch.Tensor:
        """The boolean mask (out, in) of the entries phase 2 trains (all of them in phase 1)."""
        if not self.sparse:
            return torch.ones_like(self.base.weight, dtype=torch.bool)
        flat = torch.zeros(self.base.weight.numel(), dtype=torch.bool, device=self.index.device)
        flat[self.index] = True
        return flat.view_as(self.base.weight)

    def inspect(self) -> dict[str, torch.Tensor]:
        m = self.mask()
        return {"mask": m.float(), "density": m.float().mean()}

    def sparsify(self, index: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Keep the flat entries ``index`` (sorted), reset them to θ0 (zero) and train only them from now on. The
        new ``values`` take the dense ΔW's place in ``optimizer`` with fresh moments."""
        old = self.delta
        self.index = index.to(device=old.device, dtype=torch.long).sort().values
        self.values = nn.Parameter(torch.zeros(len(self.index), dtype=old.dtype, device=old.device),
                                   requires_grad=old.requires_grad)
        if optimizer is not None:
            replace_parameter(optimizer, old, self.values)
        self.delta = None

    # -- state: dense ΔW in phase 1, (int32 indices, values) in phase 2 -------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        if not self.sparse:
            return {"delta": self.delta.detach()}
        return {"index": self.index.to(torch.int32), "values": self.values.detach()}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        if "index" in state:
            if "values" not in state or state["index"].shape != state["values"].shape:
                raise ConfigError(f"sft: adapter state for {self.name} needs 'index' and 'values' of one length")
            n = self.base.weight.numel()
            index = state["index"].long()
            if len(index) and (int(index.min()) < 0 or int(index.max()) >= n):
                raise ConfigError(f"sft: adapter state for {self.name} indexes entries outside its {n} weights")
            order = torch.argsort(index)
            device, dtype = self.base.weight.device, self.base.weight.dtype
            self.index = index[order].to(device)
            self.values = nn.Parameter(state["values"][order].to(device=device, dtype=dtype).clone())
            self.delta = None
            return
        if "delta" not in state or state["delta"].shape != self.base.weight.shape:
            raise ConfigError(f"sft: adapter state for {self.name} does not match: expected 'delta' of shape "
                              f"{tuple(self.base.weight.shape)} or 'index' and 'values', got {sorted(state)}")
        with torch.no_grad():
            self.delta.copy_(state["delta"])

    def extra_repr(self) -> str:
        kept = f", kept={len(self.index)}" if self.sparse else ", phase=full"
        return super().extra_repr() + kept


def select_mask(adaptation, k: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """LT-SFT's selection (phases 2–3): the ``k`` entries with the largest |θ1 − θ0| over *all* layers of
    ``adaptation`` (one global ``topk``), then every layer resets to θ0 and trains only its kept entries. Returns
    the number kept per layer."""
    layers = [(n, layer) for n, layer in adaptation.named_layers()]
    with torch.no_grad():
        scores = torch.cat([layer.delta.detach().abs().reshape(-1).float() for _, layer in layers])
        chosen = torch.topk(scores, k, sorted=False).indices
    kept, start = {}, 0
    for name, layer in layers:
        size = layer.base.weight.numel()
        mine = chosen[(chosen >= start) & (chosen < start + size)] - start
        layer.sparsify(mine, optimizer)
        kept[name] = len(mine)
        start += size
    return kept


@register("sft", family="sparse", paper=PAPER)
class SFT(Variant):
    summary = ("Lottery-ticket sparse fine-tuning: fine-tune the target weights in full with an L1 pull toward the "
               "pretrained ones, keep the K entries that moved most (one global budget over all layers), reset, and "
               "fine-tune only those. The result is a sparse difference θ − θ0 that adds to other such differences, "
               "so a language (domain) mask and a task mask compose by summation.")
    formula = (r"$W = W_0 + \Phi,\ \Phi = M\odot\Phi,\ M = \mathrm{top}_K\,|W_1 - W_0|\ \text{(global)},"
               r"\ \ \mathcal{L}_1 = \mathcal{L} + \lambda\,\|W - W_0\|_1/N$")
    Config = SFTConfig
    Layer = SFTLayer
    dynamic = True
    example_config = {"k": 300}
    notes = ("One selection round; exactly K entries (topk) where the code's threshold may keep ties; phase 2 trains "
             "the K values (gradient = masked full gradient) instead of masking a dense gradient; the LR schedule is "
             "not restarted for phase 2; L1 over the targets' entries only. num_trainable() is the full count in "
             "phase 1 and K after the selection.")

    def budget(self, adaptation) -> int:
        shapes = {n: tuple(layer.base.weight.shape) for n, layer in adaptation.named_layers()}
        return self.config.budget(shapes)

    @staticmethod
    def switch_step(total_steps: int, phase1: float) -> int:
        """The 0-based step after whose update the mask is chosen: round(phase1 · T) − 1, keeping ≥ 1 step of
        each phase when T ≥ 2."""
        full_steps = min(max(1, round(phase1 * total_steps)), max(total_steps - 1, 1))
        return full_steps - 1

    def regularizer(self, ctx):
        if self.config.l1 == 0:
            return None
        dense = [layer.delta for _, layer in ctx.adaptation.named_layers() if not layer.sparse]
        if not dense:
            return None
        n = sum(layer.base.weight.numel() for _, layer in ctx.adaptation.named_layers())
        return self.config.l1 * sum(d.abs().sum() for d in dense) / n

    def on_step(self, ctx):
        layers = [layer for _, layer in ctx.adaptation.named_layers()]
        if any(layer.sparse for layer in layers):
            return
        if ctx.step == self.switch_step(ctx.total_steps, self.config.phase1):
            self.kept = select_mask(ctx.adaptation, self.budget(ctx.adaptation), ctx.optimizer)


__all__ = ["SFT", "SFTLayer", "SFTConfig", "select_mask"]
