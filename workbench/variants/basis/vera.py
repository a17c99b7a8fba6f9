"""VeRA: Vector-based Random Matrix Adaptation.

Kopiczko, Blankevoort, Asano, ICLR 2024, arXiv:2310.11454, Eq. (2): ΔW = Λ_b B Λ_d A with A ∈ R^{r×d_in} and
B ∈ R^{d_out×r} frozen random matrices shared by every layer, and only the scaling vectors d ∈ R^r (Λ_d) and
b ∈ R^{d_out} (Λ_b) trained: r + d_out parameters per layer. Definitions and defaults follow PEFT 0.21
(``tuners/vera``): A and B are Kaiming-uniform from a generator seeded with ``projection_prng_key`` (0), drawn once
at the largest in/out size among the targets and sliced per layer; d starts at 0.1 and b at 0, so ΔW = 0 at init;
r = 256. The shared matrices are regenerated from the key, never saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ... import rng
from ...variant import Shared, Variant, VariantConfig, VariantLayer, param, register

PAPER = "Kopiczko, Blankevoort, Asano, 2024, VeRA: Vector-based Random Matrix Adaptation, ICLR 2024, arXiv:2310.11454"


@dataclass
class VeRAConfig(VariantConfig):
    r: int = param(256, low=1, help="rank of the shared random matrices")
    d_initial: float = param(0.1, help="initial value of the d vector")
    projection_prng_key: int = param(0, low=0, help="seed of the shared random A and B")
    dropout: float = param(0.0, low=0.0, high=0.99, help="dropout on the adapter's input (training only)")


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """PEFT's generator-driven Kaiming-uniform (gain √2, fan-in)."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeRAShared(Shared):
    """The frozen A (r × max d_in) and B (max d_out × r), regenerated from the key (non-persistent buffers)."""

    def __init__(self, config: VeRAConfig, shapes, seed):
        super().__init__(config, shapes, seed)
        out_max = max(s[0] for s in shapes.values())
        in_max = max(s[1] for s in shapes.values())
        g = torch.Generator().manual_seed(config.projection_prng_key)
        self.register_buffer("A", kaiming_uniform((config.r, in_max), g), persistent=False)
        self.register_buffer("B", kaiming_uniform((out_max, config.r), g), persistent=False)


class VeRALayer(VariantLayer):
    def __init__(self, base: nn.Linear, config: VeRAConfig, shared: VeRAShared = None, name: str = ""):
        super().__init__(base, config, shared, name)
        dev, dt = base.weight.device, base.weight.dtype
        self.lambda_d = nn.Parameter(torch.full((config.r,), float(config.d_initial), device=dev, dtype=dt))
        self.lambda_b = nn.Parameter(torch.zeros(base.out_features, device=dev, dtype=dt))
        self.drop = rng.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def _a(self) -> torch.Tensor:
        return self.shared.A[:, : self.in_features]

    def _b(self) -> torch.Tensor:
        return self.shared.B[: self.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (W0 + ΔW)ᵀ + bias in one product with the dense ΔW = Λ_b B Λ_d A (Eq. (2)) when no dropout sits on the
        adapter's input (the default), else base(x) + the factored path. Why dense: at VeRA's r = 256 on a 384-wide
        layer, the factored path's two token products (x Aᵀ, then · Bᵀ) and their two input-gradient products cost
        4·N·d·r multiply-adds for N tokens; the dense one costs d²·r to build ΔW, 2·d²·r for the gradients of Λ_b
        and Λ_d, and N·d² for ∂L/∂ΔW: ≈ 40% fewer at N = 1024, the bench's batch."""
        if self.merged or self.disabled:
            return self.base(x)
        if self.training and not isinstance(self.drop, nn.Identity):
            return self.base(x) + self.delta_forward(x)
        return F.linear(x, self.base.weight + self.delta_weight(), self.base.bias)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lambda_b * F.linear(self.lambda_d * F.linear(self.drop(x), self._a()), self._b())

    def delta_weight(self) -> torch.Tensor:
        """ΔW = Λ_b B Λ_d A: (B Λ_d) A, rows scaled by b."""
        return self.lambda_b[:, None] * ((self._b() * self.lambda_d) @ self._a())

    def factors(self):
        return self.lambda_b[:, None] * self._b() * self.lambda_d, self._a()

    def inspect(self):
        return {"lambda_d": self.lambda_d.detach().clone(), "lambda_b": self.lambda_b.detach().clone()}


@register("vera", family="basis", paper=PAPER)
class VeRA(Variant):
    summary = ("One pair of frozen random matrices A, B for the whole model; each layer learns only two scaling "
               "vectors, d (one number per rank) and b (one per output). ΔW = diag(b) B diag(d) A: about 10x fewer "
               "parameters than LoRA at the same rank.")
    formula = (r"$\Delta W = \Lambda_b\, B\, \Lambda_d\, A,\quad A, B$ frozen random and shared; $\Lambda_b,"
               r" \Lambda_d$ diagonal, trained")
    Config = VeRAConfig
    Layer = VeRALayer
    SharedModule = VeRAShared
    example_config = {"r": 16}
    notes = "Matches PEFT 0.21's VeRA (shared A, B sliced per layer; d = 0.1, b = 0 at init)."
