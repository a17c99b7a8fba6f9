"""NOLA: Compressing LoRA using Linear Combination of Random Basis.

Koohpayegani et al., ICLR 2024, arXiv:2310.02556, Eq. (2)–(3) and the official GPT-2 code: ΔW = s·B A with
A = A₀ + (1/√k) Σ_i α_i A_i and B = (1/√l) Σ_j β_j B_j, where the bases A_i ∈ R^{r×d_in}, B_j ∈ R^{d_out×r} are
i.i.d. U(−1, 1) and frozen, A₀ is a frozen Kaiming-uniform matrix, and only the mixing coefficients α ∈ R^k and
β ∈ R^l train, both starting at 0 (so ΔW = 0 while β still gets gradient). k + l parameters per layer, whatever
r, d_in and d_out. s = α_lora/r. The bases come from the layer's seed (``adapt(seed=...)``) and are regenerated
on load, never saved. Defaults: k = l = 512, r = 8, α_lora = 8 (the GPT-2 E2E script).

Simplified: the code rebuilds the bases in the backward pass to save memory; here they are kept as buffers
(k·r·(d_in + d_out) numbers per layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ... import rng
from ...variant import Variant, VariantConfig, VariantLayer, param, register

PAPER = ("Koohpayegani et al., 2024, NOLA: Compressing LoRA using Linear Combination of Random Basis, ICLR 2024, "
         "arXiv:2310.02556")


@dataclass
class NOLAConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="rank of the mixed factors A and B")
    k: int = param(512, low=1, high=65536, help="number of random bases mixed into A")
    l: int = param(512, low=1, high=65536, help="number of random bases mixed into B")
    alpha: float = param(8.0, low=0, low_open=True, help="scale numerator: s = alpha / r")


class NOLALayer(VariantLayer):
    def __init__(self, base: nn.Linear, config: NOLAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        r, dev, dt = config.r, base.weight.device, base.weight.dtype
        a0 = torch.empty(r, base.in_features)
        nn.init.kaiming_uniform_(a0, a=math.sqrt(5), generator=rng.generator(a0.device))
        # drawn from the RNG that adapt() seeds per layer: the same bases come back when a saved adapter is loaded
        self.register_buffer("A0", a0.to(dev, dt), persistent=False)
        g = rng.generator()
        self.register_buffer("A_bases", (torch.rand(config.k, r, base.in_features, generator=g) * 2 - 1).to(dev, dt),
                             persistent=False)
        self.register_buffer("B_bases", (torch.rand(config.l, base.out_features, r, generator=g) * 2 - 1).to(dev, dt),
                             persistent=False)
        self.coef_A = nn.Parameter(torch.zeros(config.k, device=dev, dtype=dt))
        self.coef_B = nn.Parameter(torch.zeros(config.l, device=dev, dtype=dt))

    def mixed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A): the mixtures of the random bases."""
        a = self.A0 + torch.einsum("k,kri->ri", self.coef_A, self.A_bases) / math.sqrt(self.config.k)
        b = torch.einsum("l,lor->or", self.coef_B, self.B_bases) / math.sqrt(self.config.l)
        return b, a

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """s · B (A x), the scale s = α/r applied to the r-wide intermediate and skipped at s = 1 (the default):
        multiplying the d_out-wide output cost ~4 ms a step on MiniLM (bench/profile_step.py, issue 24)."""
        b, a = self.mixed()
        h = F.linear(x, a)
        scale = self.config.alpha / self.config.r
        return F.linear(h if scale == 1 else h * scale, b)

    def factors(self):
        b, a = self.mixed()
        return b * (self.config.alpha / self.config.r), a

    def inspect(self):
        return {"coef_A": self.coef_A.detach().clone(), "coef_B": self.coef_B.detach().clone()}


@register("nola", family="basis", paper=PAPER)
class NOLA(Variant):
    summary = ("LoRA whose factors A and B are not trained directly: each is a linear mixture of many frozen random "
               "matrices, and only the mixing weights train. The parameter count (k + l per layer) no longer depends "
               "on the rank or the layer size, so it can go below rank-1 LoRA.")
    formula = (r"$\Delta W = \frac{\alpha}{r}\Big(\tfrac{1}{\sqrt{l}}\sum_j \beta_j B_j\Big)\Big(A_0 +"
               r" \tfrac{1}{\sqrt{k}}\sum_i \alpha_i A_i\Big)$")
    Config = NOLAConfig
    Layer = NOLALayer
    example_config = {"r": 2, "k": 16, "l": 16}
    budget_field = "k"  # r does not change the count: only the k (and l) mixing coefficients train
    notes = "Bases kept as buffers (the code regenerates them in the backward pass to save memory)."
