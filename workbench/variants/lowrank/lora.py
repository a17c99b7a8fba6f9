"""LoRA and rsLoRA: ΔW = s·B A with B ∈ R^{out×r} (zero init) and A ∈ R^{r×in}.

LoRA: Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685, Eq. (3):
h = W0 x + ΔW x = W0 x + B A x, scaled by α/r (§4.1). rsLoRA: Kalajdzievski, 2023, "A Rank Stabilization Scaling
Factor for Fine-Tuning with LoRA", arXiv:2312.03732, Thm. 3.2: s = α/√r keeps learning stable as r grows.

Definitions, initialisation and defaults match PEFT 0.21 (``tuners/lora/layer.py``): A ~ Kaiming-uniform(a=√5)
(or N(0, 1/r²) with ``init="gaussian"``), B = 0, r = 8, α = 8, dropout on the adapter input only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ... import rng
from ...variant import Variant, VariantConfig, VariantLayer, param, register

PAPER_LORA = "Hu et al., 2021, LoRA: Low-Rank Adaptation of Large Language Models, arXiv:2106.09685"
PAPER_RSLORA = "Kalajdzievski, 2023, A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA, arXiv:2312.03732"


@dataclass
class LoRAConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="rank of ΔW = B A")
    alpha: float = param(8.0, low=0, low_open=True, help="scale numerator: s = alpha / r (rsLoRA: alpha / sqrt(r))")
    dropout: float = param(0.0, low=0.0, high=0.99, help="dropout on the adapter's input (training only)")
    init: str = param("default", choices=("default", "gaussian"), help="A's init: Kaiming-uniform or N(0, 1/r^2)")


class LoRALayer(VariantLayer):
    """``forward(x) = W0 x + s · B (A dropout(x))``; ``factors() = (s·B, A)``."""

    rank_stabilized = False

    def __init__(self, base: nn.Linear, config: LoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        r = config.r
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=dev, dtype=dt))
        self.drop = rng.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.reset_parameters()

    @property
    def scaling(self) -> float:
        r = self.lora_A.shape[0]
        return self.config.alpha / (math.sqrt(r) if self.rank_stabilized else r)

    def reset_parameters(self) -> None:
        if self.config.init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.config.r, generator=rng.generator(self.lora_A.device))
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=rng.generator(self.lora_A.device))
        nn.init.zeros_(self.lora_B)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        # scale the r-dimensional intermediate, not the out-dimensional result: r << out
        return F.linear(F.linear(self.drop(x), self.lora_A) * self.scaling, self.lora_B)

    def factors(self):
        return self.lora_B * self.scaling, self.lora_A

    def peft_factors(self):
        """PEFT's own tensors, unscaled: PEFT applies the scale from ``lora_alpha`` (and ``use_rslora``) itself."""
        return self.lora_A, self.lora_B, None

    def inspect(self):
        return {"rank": torch.tensor(float(self.lora_A.shape[0])), "scaling": torch.tensor(self.scaling)}


@register("lora", family="lowrank", paper=PAPER_LORA)
class LoRA(Variant):
    summary = ("Freeze W0 and learn a rank-r update ΔW = (α/r)·B A. B starts at zero, so training starts from the "
               "pretrained model; r(d_in + d_out) parameters per layer instead of d_in·d_out.")
    formula = (r"$W = W_0 + \frac{\alpha}{r} B A,\quad B\in\mathbb{R}^{d_{out}\times r}, A\in\mathbb{R}^{r\times"
               r" d_{in}}$")
    Config = LoRAConfig
    Layer = LoRALayer
    example_config = {"r": 4}

    @classmethod
    def peft_settings(cls, config):
        return {"r": config.r, "lora_alpha": config.alpha, "use_rslora": False, "use_dora": False}


class RsLoRALayer(LoRALayer):
    rank_stabilized = True


@dataclass
class RsLoRAConfig(LoRAConfig):
    pass


@register("rslora", family="lowrank", paper=PAPER_RSLORA)
class RsLoRA(Variant):
    summary = ("LoRA with scale α/√r instead of α/r. With α/r, the update shrinks as r grows and larger ranks "
               "learn no better; α/√r keeps activations and gradients of order one for any r (rank-stabilised).")
    formula = r"$W = W_0 + \frac{\alpha}{\sqrt{r}} B A$"
    Config = RsLoRAConfig
    Layer = RsLoRALayer
    example_config = {"r": 4}

    @classmethod
    def peft_settings(cls, config):
        return {"r": config.r, "lora_alpha": config.alpha, "use_rslora": True, "use_dora": False}
