"""Full fine-tuning of the target weights: the reference every adapter is compared against.

ΔW is one dense trainable matrix per target (d_out·d_in parameters), initialised at zero, so the forward pass is
``F.linear(x, W0 + ΔW, b)`` — one matmul, as in plain fine-tuning. The gradient of ΔW equals the gradient of W.
One difference from fine-tuning W itself: AdamW's decoupled weight decay pulls ΔW (not W) toward zero, i.e.
toward the pretrained weights, which is the usual choice in the PEFT literature's full-FT baselines.

Biases stay frozen by default, as in the adapters it is compared with (PEFT's ``bias="none"``); ``train_bias=True``
also trains each target's bias, as a zero-initialised Δb (d_out more parameters per target that has a bias), so the
layer computes ``F.linear(x, W0 + ΔW, b0 + Δb)``. The update is then affine, not linear: ``delta_weight()`` is ΔW
alone, ``delta_forward(x) = x ΔWᵀ + Δb``, and merge folds both into the base (an export of ΔW alone drops Δb).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...variant import DenseDeltaLayer, Variant, VariantConfig, param, register


@dataclass
class FullConfig(VariantConfig):
    train_bias: bool = param(False, help="also train each target's bias (a zero-initialised Δb); off: frozen, as "
                                         "PEFT's bias='none' and the adapters it is compared with")


class FullLayer(DenseDeltaLayer):
    def __init__(self, base: nn.Linear, config: FullConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        self.delta = nn.Parameter(torch.zeros_like(base.weight))
        self.delta_bias = (nn.Parameter(torch.zeros_like(base.bias))
                           if config.train_bias and base.bias is not None else None)
        if self.delta_bias is not None:
            self.linear_delta = False  # forward = base + x ΔWᵀ + Δb: affine; effective_weight() is still W0 + ΔW

    def delta_weight(self) -> torch.Tensor:
        return self.delta

    def effective_bias(self) -> torch.Tensor | None:
        """b0 + Δb (b0 alone when the bias is frozen)."""
        if self.delta_bias is None:
            return self.base.bias
        return self.base.bias + self.delta_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base(x)
        return F.linear(x, self.effective_weight(), self.effective_bias())

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.delta, self.delta_bias)

    def merge(self) -> None:
        if self.merged:
            return
        super().merge()
        if self.delta_bias is not None:
            with torch.no_grad():
                self.base.bias.add_(self.delta_bias.to(self.base.bias.dtype))

    def unmerge(self) -> None:
        if not self.merged:
            return
        super().unmerge()
        if self.delta_bias is not None:
            with torch.no_grad():
                self.base.bias.sub_(self.delta_bias.to(self.base.bias.dtype))


@register("full", family="lowrank", paper="Full fine-tuning of the target layers (the reference baseline)")
class Full(Variant):
    summary = ("Train every entry of each target weight. The most expressive and most expensive option: the "
               "yardstick for how much quality an adapter gives up for its parameter savings.")
    formula = r"$W = W_0 + \Delta W,\quad \Delta W \in \mathbb{R}^{d_{out}\times d_{in}}$ (dense)"
    Config = FullConfig
    Layer = FullLayer
    notes = "Biases frozen unless train_bias=True (then a trained Δb per target; the update is affine)."
