"""LoLDU: Low-Rank Adaptation via Lower-Diag-Upper Decomposition.

Shi et al., 2024, arXiv:2410.13618 and the official ``minloldu`` code: pivoted LU of the pretrained weight,
W = P L U (``torch.linalg.lu``), with the diagonal split out, D = diag(U), Ū = D⁻¹U. The first r pivots give
ΔW = s·P L_r diag(z − D_r) Ū_r with only z ∈ R^r trainable, initialised to D_r (so ΔW = 0 and W_eff = W at init;
equivalently W_eff = W_res + s·P L_r diag(z) Ū_r with the frozen residual W_res = W − s·P L_r diag(D_r) Ū_r).
s = α/r with α = 1 (``from_linear``'s default). P L_r and Ū_r are frozen and saved with the adapter.

Checked against github.com/SKDDJ/LoLDU (``minloldu/loldu.py``, ``LoLDUParametrization``): ``ldu_decomposition``,
the residual ``W − s·P L_r diag(D_r) U_r``, the forward ``W_res + s·P L_r diag(z) U_r``, ``init_method="lu"``
(z = D_r) and the trainable filter ``name_is_loldu`` (z only; the scale is a Parameter there but not trained). Rank:
the code's class default is 4, its ``default_loldu_config`` 768 (full rank for 768-wide models) and the README
example 15; we default to 16. We keep ΔW in factored form instead of rewriting W, which is the same map.
Not included: the paper's ablations (a trainable scale, other z initialisations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...variant import Variant, VariantConfig, VariantLayer, param, register

PAPER = "Shi et al., 2024, LoLDU: Low-Rank Adaptation via Lower-Diag-Upper Decomposition, arXiv:2410.13618"


@dataclass
class LoLDUConfig(VariantConfig):
    r: int = param(16, low=1, high=min, help="number of LU pivots whose diagonal trains")
    alpha: float = param(1.0, low=0, low_open=True, help="scale numerator: s = alpha / r")


class LoLDULayer(VariantLayer):
    no_decay = ("z",)  # z starts at D (ΔW ∝ z − D): weight decay toward 0 would move W away from W0
    def __init__(self, base: nn.Linear, config: LoLDUConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        with torch.no_grad():
            p, lower, upper = torch.linalg.lu(base.weight.float())
            d = torch.diagonal(upper)
            r, dt = config.r, base.weight.dtype
            self.register_buffer("PL", (p @ lower[:, :r]).to(dt).contiguous())
            self.register_buffer("U_bar", (upper[:r] / d[:r, None]).to(dt).contiguous())
            self.register_buffer("D", d[:r].to(dt).clone())
        self.z = nn.Parameter(self.D.clone())

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.r

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.U_bar) * ((self.z - self.D) * self.scaling), self.PL)

    def factors(self):
        return self.PL * ((self.z - self.D) * self.scaling), self.U_bar

    def inspect(self):
        return {"z_over_D": (self.z / self.D).detach().clone()}


@register("loldu", family="tiny", paper=PAPER)
class LoLDU(Variant):
    summary = ("Factor the pretrained weight as P·L·D·U (an LU decomposition with its diagonal pulled out) and "
               "fine-tune only r entries of the diagonal D: a few numbers per layer that rescale the weight's "
               "own triangular factors.")
    formula = r"$\Delta W = \frac{\alpha}{r} P L_r\,\mathrm{diag}(z - D_r)\,\bar U_r,\quad z|_{t=0} = D_r$"
    Config = LoLDUConfig
    Layer = LoLDULayer
    example_config = {"r": 8}
    notes = "The paper's ablations (trainable scale, other z inits) are not included."
