"""LoRA-XS: Low-Rank Adaptation with Extremely Small Number of Parameters.

Bałazy et al., 2024, arXiv:2405.17604, Eq. (3)–(4): with the truncated SVD of the pretrained weight,
W ≈ U_r Σ_r V_rᵀ, ΔW = s · U_r R Σ_r V_rᵀ where B = U_r and A = Σ_r V_rᵀ are frozen and only the r×r matrix R trains
(r² parameters per layer, independent of the layer's width). R starts at N(0, (1e-5)²) and s = α/r with α = 16 as in
the official GLUE scripts. B and A are saved with the adapter (they are cheap and make a loaded adapter exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ... import rng
from ...variant import Variant, VariantConfig, VariantLayer, param, register

PAPER = ("Bałazy et al., 2024, LoRA-XS: Low-Rank Adaptation with Extremely Small Number of Parameters, "
         "arXiv:2405.17604")


@dataclass
class LoRAXSConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="rank: R is r x r")
    alpha: float = param(16.0, low=0, low_open=True, help="scale numerator: s = alpha / r")


class FrozenFactorsLayer(VariantLayer):
    """ΔW = s · B R A with frozen B (out × r), A (r × in) and a trainable r×r core R."""

    def __init__(self, base: nn.Linear, config, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        r, dev, dt = config.r, base.weight.device, base.weight.dtype
        self.register_buffer("B", torch.zeros(base.out_features, r, device=dev, dtype=dt))
        self.register_buffer("A", torch.zeros(r, base.in_features, device=dev, dtype=dt))
        self.R = nn.Parameter(torch.zeros(r, r, device=dev, dtype=dt))

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.r

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(F.linear(x, self.A), self.R), self.B) * self.scaling

    def factors(self):
        return self.B @ self.R * self.scaling, self.A

    def inspect(self):
        return {"R": self.R.detach().clone()}


class LoRAXSLayer(FrozenFactorsLayer):
    def __init__(self, base: nn.Linear, config: LoRAXSConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(base.weight.float(), full_matrices=False)
            r = config.r
            self.B.copy_(u[:, :r])
            self.A.copy_(s[:r, None] * vh[:r])
            self.R.normal_(0.0, 1e-5, generator=rng.generator(self.R.device))


@register("lora-xs", family="basis", paper=PAPER)
class LoRAXS(Variant):
    summary = ("Freeze the top-r singular vectors of the pretrained weight as LoRA's B and A and train only a small "
               "r×r matrix between them: r² parameters per layer, whatever the layer's size.")
    formula = r"$\Delta W = \frac{\alpha}{r} U_r\, R\, \Sigma_r V_r^\top,\quad R \in \mathbb{R}^{r\times r}$ trained"
    Config = LoRAXSConfig
    Layer = LoRAXSLayer
    example_config = {"r": 4}
    preserves_init = False  # R ~ N(0, 1e-5²): ΔW is tiny but not zero
    notes = "Frozen factors from the SVD of W0 as in the official code; R ~ N(0, 1e-5²)."
