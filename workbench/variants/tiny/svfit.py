"""SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained Models Using Singular Values.

Sun et al., 2024, arXiv:2409.05926, §3: W = U Σ Vᵀ; the top-r singular values σ_r become trainable (σ̃, initialised
to σ_r) while U_r, V_r and the rest W_e = W − U_r diag(σ_r) V_rᵀ stay frozen:
W′ = W_e + U_r diag(σ̃) V_rᵀ, i.e. ΔW = U_r diag(σ̃ − σ_r) V_rᵀ, zero at init. r parameters per layer.

Confirmed from the abstract (arXiv v1) and a summary of §3: the SVD of W, the best rank-r approximation W_r, the top-r
singular values as the only trainable parameters, W_e and the singular subspaces frozen. Not confirmed (the method
section was not readable here and no official code was found): the abstract says the top-r values "capture over 99%
of the matrix's information", but not whether r is derived from an energy rule (Σσᵢ² or Σσᵢ); here r is a
hyper-parameter, or, with ``energy`` > 0, the per-layer smallest r whose σᵢ² hold that share (our reading of the
rule); there is no extra scale. U_r, V_r and σ_r are saved with the adapter so a loaded adapter is exact.
Searched again (issue 13: the arXiv HTML, paper summaries, the code, docs and issue corpora): only the abstract
and summaries are readable and no official code is published, so the class sets ``reconstruction``, shown in
docs/VARIANTS.md, the README's variant block and ``variant_table()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...variant import Variant, VariantConfig, VariantLayer, param, register

PAPER = ("Sun et al., 2024, SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained Models Using Singular "
         "Values, arXiv:2409.05926")


@dataclass
class SVFitConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="number of top singular values that train")
    energy: float = param(0.0, low=0.0, high=1.0, help="if > 0, each layer trains the fewest top singular values "
                          "holding this share of Σσ² (the abstract's 99% rule, e.g. 0.99); overrides r")


def energy_rank(s: torch.Tensor, share: float) -> int:
    """The smallest r with Σ_{i≤r} σᵢ² ≥ share · Σ σᵢ²."""
    cumulative = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    return min(int((cumulative < share).sum()) + 1, len(s))


class SVFitLayer(VariantLayer):
    no_decay = ("sigma",)  # σ starts at σ0 (ΔW ∝ σ − σ0): weight decay toward 0 would move W away from W0
    def __init__(self, base: nn.Linear, config: SVFitConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(base.weight.float(), full_matrices=False)
        r = energy_rank(s, config.energy) if config.energy > 0 else config.r
        dt = base.weight.dtype
        self.register_buffer("U", u[:, :r].to(dt).contiguous())
        self.register_buffer("Vh", vh[:r].to(dt).contiguous())
        self.register_buffer("sigma0", s[:r].to(dt).clone())
        self.sigma = nn.Parameter(s[:r].to(dt).clone())

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.Vh) * (self.sigma - self.sigma0), self.U)

    def factors(self):
        return self.U * (self.sigma - self.sigma0), self.Vh

    def inspect(self):
        return {"sigma_ratio": (self.sigma / self.sigma0).detach().clone()}


@register("svfit", family="tiny", paper=PAPER)
class SVFit(Variant):
    summary = ("Keep the pretrained weight's singular vectors fixed and fine-tune only its top-r singular values: "
               "r numbers per layer that rescale the directions the model already uses most.")
    formula = (r"$W' = W_e + U_r\,\mathrm{diag}(\tilde\sigma)\,V_r^\top,\quad \Delta W ="
               r" U_r\,\mathrm{diag}(\tilde\sigma - \sigma_r)\,V_r^\top$")
    Config = SVFitConfig
    Layer = SVFitLayer
    example_config = {"r": 4}
    notes = ("r is a hyper-parameter; energy=0.99 picks r per layer by Σσ² (our reading of the abstract's "
             "'over 99% of the information', not confirmed).")
    reconstruction = ("only the rank rule: energy > 0 picks r per layer by Σσ², our reading of the abstract's 'over "
                      "99% of the information' (training the top-r σ with W_e frozen follows summaries of §3)")
