"""LoRA-SB: Initialization using Update Approximation is a Silver Bullet for Extreme Efficient Low-Rank Fine-Tuning.

Ponkshe, Singhal et al., 2024–25, arXiv:2411.19557. LoRA-XS's architecture, ΔW = B R A with B, A frozen and the
r×r core R trained, initialised so that training starts where full fine-tuning would be after its first step
(§4, Algorithm 1):

1. accumulate the full-weight gradient G = Σ ∇_W L over a few batches (2 for GLUE in the code);
2. approximate the first full step as ΔW_approx = −η·sign(G) (sign mimics Adam's first step);
3. take its truncated SVD U_r S_r V_rᵀ and set B = U_r, A = V_rᵀ, R = S_r, with s = 1 (α = r).

ΔW at step 0 is therefore the best rank-r approximation of ΔW_approx (Eckart–Young) and is not zero; W0 is not
corrected. Here η is the training learning rate (our loop has no warmup; the code uses the first warmup step's
rate), and the SVD is exact (the code uses ``svd_lowrank`` with 10 iterations, which approximates the same top-r).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...probes.gradients import full_weight_gradients
from ...variant import Variant, VariantConfig, param, register
from .lora_xs import FrozenFactorsLayer

PAPER = ("Ponkshe, Singhal et al., 2024, Initialization using Update Approximation is a Silver Bullet for "
         "Extreme Efficient Low-Rank Fine-Tuning, arXiv:2411.19557")


@dataclass
class LoRASBConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="rank: R is r x r")
    init_batches: int = param(2, low=1, high=1000, help="batches whose gradients approximate the first step")
    eta: float = param(0.0, low=0.0, help="η of ΔW_approx = −η·sign(G); 0 uses the training learning rate")

    @property
    def alpha(self) -> float:
        return float(self.r)  # s = 1


class LoRASBLayer(FrozenFactorsLayer):
    """Until ``initialise`` runs, B, A and R are zero (ΔW = 0)."""

    def initialise(self, delta_approx: torch.Tensor) -> None:
        r = self.config.r
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(delta_approx.float(), full_matrices=False)
            self.B.copy_(u[:, :r])
            self.A.copy_(vh[:r])
            self.R.copy_(torch.diag(s[:r]))


@register("lora-sb", family="basis", paper=PAPER)
class LoRASB(Variant):
    summary = ("LoRA-XS's tiny r×r core, but with B, A and R initialised from an SVD of the first full "
               "fine-tuning step (estimated from a couple of batches' gradients). Training starts in the subspace "
               "full fine-tuning would move in, and the first steps count.")
    formula = r"$\Delta W = B R A,\quad B R A\,|_{t=0} = \mathrm{SVD}_r\!\left(-\eta\,\mathrm{sign}(\nabla_W L)\right)$"
    Config = LoRASBConfig
    Layer = LoRASBLayer
    preserves_init = False
    example_config = {"r": 4}
    notes = "η is the training learning rate (no warmup in our loop); exact SVD instead of svd_lowrank."

    def prepare(self, ctx, batches):
        adaptation, task = ctx.adaptation, ctx.task
        grads: dict[str, torch.Tensor] = {}
        for _ in range(self.config.init_batches):
            for name, g in full_weight_gradients(adaptation, task, next(batches)).items():
                grads[name] = grads[name] + g if name in grads else g
        eta = self.config.eta or ctx.lr
        for name, layer in adaptation.named_layers():
            if name in grads:
                layer.initialise(-eta * torch.sign(grads[name]))
