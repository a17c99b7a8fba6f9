"""DoRA: Weight-Decomposed Low-Rank Adaptation.

Liu et al., ICML 2024, arXiv:2402.09353, Eq. (5): W' = m · (W0 + s·B A) / ‖W0 + s·B A‖_c, where ‖·‖_c is the norm
of each output row in nn.Linear's (out, in) layout (the paper's column norm) and m ∈ R^{out} starts at ‖W0‖_c.
§4.3: the norm is treated as a constant in backward (detached), which saves memory and, per the paper, costs no
accuracy. Matches PEFT 0.21 ``use_dora=True``: y = W0 x + (m/‖·‖ − 1)·W0 x̃ + (m/‖·‖)·s·B A x̃, where x̃ = dropout(x)
is one dropped-out input shared by both adapter terms (PEFT's ``DoraLinearVariant.forward`` and the NVlabs code
both pass it to the magnitude term as well; with dropout 0 or in eval mode x̃ = x and y = (m/‖·‖)·(W0 x + s·B A x)).
Before, dropout reached the LoRA branch only, another objective in training mode (max output difference 0.60 against
PEFT with a shared mask at dropout 0.5).

Weight decay: m starts at ‖W0‖_c, so decaying it toward 0 shrinks every row of W (18% in 200 AdamW steps at wd 0.1
with zero gradients); it is in ``no_decay``. (PEFT with the HF Trainer decays it.)

Not a linear delta: W' rescales W0's rows, so ``delta_weight()`` is ``effective_weight() − W0`` (exact at the
current parameters) but the map from (m, B, A) to ΔW is not linear. Inspect ``magnitude`` (m) and its change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...variant import Variant, register
from .lora import LoRAConfig, LoRALayer

PAPER = "Liu et al., 2024, DoRA: Weight-Decomposed Low-Rank Adaptation, ICML 2024, arXiv:2402.09353"


@dataclass
class DoRAConfig(LoRAConfig):
    pass


class DoRALayer(LoRALayer):
    linear_delta = False
    no_decay = ("magnitude",)  # m starts at ‖W0‖_c: decay toward 0 would shrink W's rows

    def __init__(self, base: nn.Linear, config: DoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        with torch.no_grad():
            self.magnitude = nn.Parameter(self._column_norm().clone())

    def _column_norm(self) -> torch.Tensor:
        """‖W0 + s·B A‖ per output row."""
        return torch.linalg.vector_norm(self.base.weight + (self.lora_B @ self.lora_A) * self.scaling, dim=1)

    def _scale(self) -> torch.Tensor:
        # detached as in the paper's §4.3 and PEFT; the dense B A is built once per step, for the norm only
        with torch.no_grad():
            norm = self._column_norm()
        return self.magnitude / norm

    def _lora(self, x: torch.Tensor) -> torch.Tensor:
        """s·B A x without dropout (the caller passes the dropped-out input)."""
        return F.linear(F.linear(x, self.lora_A) * self.scaling, self.lora_B)

    def _dropout_active(self) -> bool:
        return self.training and not isinstance(self.drop, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base(x)
        if self._dropout_active():  # W0 x + (m/‖·‖ − 1)·W0 x̃ + (m/‖·‖)·s·B A x̃, one mask for both terms (PEFT)
            return self.base(x) + self.delta_forward(x)
        out = self._scale() * (F.linear(x, self.base.weight) + self._lora(x))  # x̃ = x: two matmuls, not three
        return out if self.base.bias is None else out + self.base.bias

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._scale()
        xd = self.drop(x)
        return (scale - 1) * F.linear(xd, self.base.weight) + scale * self._lora(xd)

    def effective_weight(self) -> torch.Tensor:
        w = self.base.weight + (self.lora_B @ self.lora_A) * self.scaling
        return (self.magnitude / torch.linalg.vector_norm(w, dim=1).detach())[:, None] * w

    def delta_weight(self) -> torch.Tensor:
        return self.effective_weight() - self.base.weight

    def factors(self):
        return None  # the magnitude rescales rows of W0 too: ΔW is not B A

    def peft_factors(self):
        """PEFT's ``use_dora=True`` tensors: A, B (unscaled) and the magnitude m."""
        return self.lora_A, self.lora_B, self.magnitude

    def inspect(self):
        with torch.no_grad():
            base_norm = torch.linalg.vector_norm(self.base.weight, dim=1)
            return {**super().inspect(), "magnitude": self.magnitude.detach().clone(),
                    "magnitude_change": (self.magnitude - base_norm).detach()}


@register("dora", family="lowrank", paper=PAPER)
class DoRA(Variant):
    summary = ("Split each weight row into a magnitude and a direction. Train the magnitude m directly and the "
               "direction with LoRA: W' = m · (W0 + BA)/‖W0 + BA‖. The paper finds this separates the two kinds "
               "of change the way full fine-tuning does, and beats LoRA at the same rank.")
    formula = r"$W' = m \odot \frac{W_0 + \frac{\alpha}{r} B A}{\lVert W_0 + \frac{\alpha}{r} B A \rVert_c}$"
    Config = DoRAConfig
    Layer = DoRALayer
    example_config = {"r": 4}
    notes = ("Dropout, as in PEFT and the NVlabs code, acts on the input of both adapter terms, the magnitude's "
             "(m/‖·‖ − 1)·W0 x̃ and the LoRA branch. The magnitude is kept out of weight decay (PEFT with the HF "
             "Trainer would decay it toward 0, which shrinks W).")

    @classmethod
    def peft_settings(cls, config):
        return {"r": config.r, "lora_alpha": config.alpha, "use_rslora": False, "use_dora": True}
