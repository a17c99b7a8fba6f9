"""Comp-LoRA: LoRA in the complementary subspace of the pretrained weight's principal directions.

Wang et al., 2025, arXiv:2501.15040 (few-shot CLIP fine-tuning that keeps zero-shot ability). The update is kept out
of the top-k left singular subspace of W0 (W0 = U Σ Vᵀ): ΔW = s·P_⊥ B A with P_⊥ = I − U_k U_kᵀ, so the directions
the pretrained model relies on most are not overwritten. The projection is applied in the forward pass, so it holds
exactly at every step; B = 0 and A Kaiming-uniform as in LoRA; r(d_in + d_out) parameters per layer.

What was checked: the abstract ("we optimize the low rank matrix in the complementary subspace, thus preserving the
general vision language alignment ability") and summaries (an SVD of the pretrained weight; no extra parameters).
The method section and code were not available. Not confirmed: projecting on the left only (the paper may also project
A on the right with I − V_k V_kᵀ, or initialise A, B from the complementary singular vectors instead of projecting),
and the choice of k (a hyper-parameter here, not an energy threshold).
Searched again (issue 13: the arXiv HTML, paper summaries, the code, docs and issue corpora): only the abstract
and summaries are readable and no official code is published, so the class sets ``reconstruction``, shown in
docs/VARIANTS.md, the README's variant block and ``variant_table()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...variant import Variant, param, register
from ..lowrank.lora import LoRAConfig, LoRALayer

PAPER = ("Wang et al., 2025, Complementary Subspace Low-Rank Adaptation of Vision-Language Models for Few-Shot "
         "Classification, arXiv:2501.15040")


@dataclass
class CompLoRAConfig(LoRAConfig):
    k: int = param(8, low=1, high=min, help="top singular directions of W0 that ΔW must avoid")


class CompLoRALayer(LoRALayer):
    def __init__(self, base: nn.Linear, config: CompLoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        with torch.no_grad():
            u = torch.linalg.svd(base.weight.float(), full_matrices=False).U[:, : config.k]
        self.register_buffer("U_k", u.to(base.weight.dtype).contiguous())

    def projected_B(self) -> torch.Tensor:
        """P_⊥ B = B − U_k (U_kᵀ B): an out×k×r product per step."""
        return self.lora_B - self.U_k @ (self.U_k.t() @ self.lora_B)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.drop(x), self.lora_A) * self.scaling, self.projected_B())

    def factors(self):
        return self.projected_B() * self.scaling, self.lora_A

    def inspect(self):
        with torch.no_grad():
            d = self.delta_weight()
            leak = torch.linalg.matrix_norm(self.U_k.t() @ d) / torch.linalg.matrix_norm(d).clamp_min(1e-30)
        return {**super().inspect(), "principal_leak": leak}


@register("comp-lora", family="tiny", paper=PAPER)
class CompLoRA(Variant):
    summary = ("LoRA whose update is projected out of the pretrained weight's top-k singular directions, so "
               "fine-tuning adds new directions instead of overwriting the ones the model relies on most.")
    formula = r"$\Delta W = \frac{\alpha}{r}(I - U_k U_k^\top) B A$"
    Config = CompLoRAConfig
    Layer = CompLoRALayer
    example_config = {"r": 4, "k": 4}
    notes = "Left projection only, k a hyper-parameter (the paper's method section and code were not found)."
    reconstruction = ("the complementary subspace: B projected out of W0's top-k left singular directions in the "
                      "forward pass (left side only; k a hyper-parameter)")
