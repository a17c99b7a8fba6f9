"""AdamW (Loshchilov & Hutter, 2019, arXiv:1711.05101): the default recipe for every variant."""

from __future__ import annotations

import torch

from .base import Recipe, register_recipe


@register_recipe("adamw", paper="Loshchilov & Hutter, 2019, Decoupled Weight Decay Regularization, arXiv:1711.05101")
class AdamW(Recipe):
    summary = ("Adam with decoupled weight decay on every trainable tensor: the default way every variant is "
               "trained, and the baseline each recipe is compared with.")

    def build(self) -> torch.optim.Optimizer:
        groups = self.adaptation.variant.param_groups(self.adaptation, self.lr, self.weight_decay)
        # foreach kernels: one fused launch over all adapter tensors instead of one per tensor
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, foreach=True)
