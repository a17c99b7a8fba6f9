"""Uni-LoRA: One Vector is All You Need.

Li et al., NeurIPS 2025, arXiv:2506.00799. Every adapted layer has LoRA's form ΔW_ℓ = B_ℓ A_ℓ (no α/r scale), but
all entries of all A_ℓ and B_ℓ of the whole model are one vector θ_D = P θ_d, where θ_d ∈ R^d is the **only**
trainable tensor and P is a fixed random isometric projection (Eq. (6)–(8)): every LoRA entry i reads one slot j(i)
of θ_d, scaled by 1/√n_j with n_j the number of entries reading slot j, so PᵀP = I. d is independent of the number
and size of the layers.

Definitions and defaults follow PEFT 0.21 (``tuners/unilora``): r = 4, d = 256, slot assignment balanced (each slot
gets ⌊D/d⌋ or ⌊D/d⌋+1 entries) and shuffled by ``numpy.random.default_rng(proj_seed=42)``, entries laid out layer by
layer (A then B), θ_d ~ U(−0.02, 0.02). Both factors are random at init, so ΔW is small but not zero
(``preserves_init`` is False). The assignment is regenerated from the seed, never saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ... import rng
from ...variant import Shared, Variant, VariantConfig, VariantLayer, param, register

PAPER = "Li et al., 2025, Uni-LoRA: One Vector is All You Need, NeurIPS 2025, arXiv:2506.00799"


@dataclass
class UniLoRAConfig(VariantConfig):
    r: int = param(4, low=1, high=min, help="rank of every layer's B A")
    d: int = param(256, low=1, high=100_000_000, help="length of the one trainable vector θ_d")
    proj_seed: int = param(42, low=0, help="seed of the random slot assignment")
    init_bound: float = param(0.02, low=0.0, help="θ_d ~ U(-bound, bound) at init")


def slot_assignment(n_entries: int, d: int, seed: int) -> torch.Tensor:
    """Balanced, shuffled slot of every LoRA entry (PEFT's ``generate_index``)."""
    rng = np.random.default_rng(seed)
    data = np.repeat(np.arange(d), n_entries // d)
    if n_entries % d:
        data = np.concatenate([data, rng.choice(d, size=n_entries % d, replace=False)])
    rng.shuffle(data)
    return torch.as_tensor(data, dtype=torch.long)


def build_bytes(config: UniLoRAConfig, shapes) -> tuple[int, int]:
    """(bytes the shared module keeps, bytes alive at the peak of building it) for layers of ``shapes`` (out, in).

    With D = Σ r(d_in + d_out) LoRA entries, it keeps θ_d (4·d), the slot of every entry (int64, 8·D: the NumPy
    array itself, shared by ``torch.as_tensor``) and its scale (4·D). The peak is the largest of, on top of θ_d:
    :func:`slot_assignment` (``arange(d)`` next to the repeated slots, 8·d + 8·d·⌊D/d⌋; the concatenation with the
    remainder, 16·D), the counts (``bincount``'s int64 and float32 copies, then the mask, reciprocal root, zeros and
    chosen scale next to the slots: 8·D + 17·d) and the per-entry scales (12·D + 8·d, counts and scale still alive).
    The layers keep nothing of their own (slices into θ_d)."""
    n, d = sum(config.r * (i + o) for o, i in shapes.values()), config.d
    repeated = 8 * d * (n // d)
    assignment = max(8 * d + repeated, 16 * n if n % d else 0)
    return 4 * d + 12 * n, 4 * d + max(assignment, 8 * n + 17 * d, 12 * n + 8 * d)


class UniLoRAShared(Shared):
    """θ_d and, for every layer, which slot each entry of its A and B reads (with the isometry's scale)."""

    def __init__(self, config: UniLoRAConfig, shapes, seed):
        super().__init__(config, shapes, seed)
        self.theta = nn.Parameter(torch.empty(config.d).uniform_(-config.init_bound, config.init_bound,
                                                                   generator=rng.generator()))
        sizes = [(config.r * i, o * config.r) for o, i in shapes.values()]
        slots = slot_assignment(sum(a + b for a, b in sizes), config.d, config.proj_seed)
        counts = torch.bincount(slots, minlength=config.d).float()
        scale = torch.where(counts > 0, counts.rsqrt(), torch.zeros_like(counts))
        self.register_buffer("slots", slots, persistent=False)
        self.register_buffer("scales", scale[slots], persistent=False)
        self.offsets = {}
        at = 0
        for name, (a, b) in zip(shapes, sizes):
            self.offsets[name] = at
            at += a + b


class UniLoRALayer(VariantLayer):
    def __init__(self, base: nn.Linear, config: UniLoRAConfig, shared: UniLoRAShared = None, name: str = ""):
        super().__init__(base, config, shared, name)
        r, i, o = config.r, base.in_features, base.out_features
        start = shared.offsets[name]
        self._a = slice(start, start + r * i)
        self._b = slice(start + r * i, start + r * i + o * r)

    def factors(self):
        s = self.shared
        a = (s.theta[s.slots[self._a]] * s.scales[self._a]).view(self.config.r, self.in_features)
        b = (s.theta[s.slots[self._b]] * s.scales[self._b]).view(self.out_features, self.config.r)
        return b, a

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        b, a = self.factors()
        return F.linear(F.linear(x, a), b)


@register("uni-lora", family="basis", paper=PAPER)
class UniLoRA(Variant):
    summary = ("One trainable vector for the whole model. Every entry of every layer's LoRA factors is a fixed, "
               "randomly chosen entry of that vector (scaled so the map is an isometry). Adding layers adds no "
               "parameters: a few hundred to a few thousand numbers can adapt a whole network.")
    formula = r"$\mathrm{vec}(A_1, B_1, \dots, A_L, B_L) = P\,\theta_d,\quad P^\top P = I,\ \theta_d \in \mathbb{R}^d$"
    Config = UniLoRAConfig
    Layer = UniLoRALayer
    SharedModule = UniLoRAShared
    preserves_init = False
    example_config = {"r": 2, "d": 64}
    budget_field = "d"  # r does not change the count: the one trained vector has d entries
    notes = "Matches PEFT 0.21's Uni-LoRA (balanced shuffled slots, 1/√count scales, θ_d ~ U(-0.02, 0.02))."

    @classmethod
    def estimate_bytes(cls, cfg: UniLoRAConfig, shapes: dict[str, tuple[int, int]]) -> int:
        """Peak bytes of building the adapter on ``shapes`` (out, in), read by ``memory.adaptation_bytes``: the slot
        assignment runs in NumPy and ``bincount`` reads values, so it cannot be built on ``meta`` to be counted."""
        return build_bytes(cfg, shapes)[1]
