"""S2-LoRA: Sparsely Shared LoRA.

Liu, Qin, Peng, Lee, 2023, "Sparsely Shared LoRA on Whisper for Child Speech Recognition", arXiv:2309.11756.
One pair A ∈ R^{r×d_in}, B ∈ R^{d_out×r} is shared by every adapted weight (one pair per distinct layer shape), and
each weight ℓ keeps only a rank-coefficient vector λ_ℓ ∈ R^r: ΔW_ℓ = s·B diag(λ_ℓ) A. A, B and all λ train; the λ
are kept sparse by an L1 penalty, applied here as its proximal step after every update (SoRA's soft threshold,
λ ← sign(λ)·max(|λ| − η·γ, 0)), which gives exact zeros. Init: A Kaiming-uniform, B = 0, λ = 1; s = α/r.

What was checked: the abstract ("the two low-rank decomposed matrices are globally shared. Each weight matrix only has
to maintain its specific rank coefficients that are constrained to be sparse"; AdaLoRA's learnable rank coefficients
as the motivation). The method section was not available and no code was found. Not confirmed: the exact form and
strength of the sparsity constraint (γ = 0.1 is our choice; the notes allow the proximal form), any AdaLoRA-style
orthogonality term, and what "globally" means for layers of different shapes (here: one pair per shape, so a model
whose targets share one shape, like Whisper's attention projections, gets exactly one pair).
Searched again (issue 13: the arXiv HTML, paper summaries, the code, docs and issue corpora): only the abstract
and summaries are readable and no official code is published, so the class sets ``reconstruction``, shown in
docs/VARIANTS.md, the README's variant block and ``variant_table()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ... import rng
from ...variant import Shared, Variant, VariantConfig, VariantLayer, param, register
from ..rank.gated import soft_threshold_, with_gate_group

PAPER = ("Liu, Qin, Peng, Lee, 2023, Sparsely Shared LoRA on Whisper for Child Speech Recognition, "
         "arXiv:2309.11756")


@dataclass
class S2LoRAConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="rank of the shared pair")
    alpha: float = param(16.0, low=0, low_open=True, help="scale numerator: s = alpha / r")
    lam: float = param(0.1, low=0.0, help="L1 strength γ on the rank coefficients (proximal threshold lr · γ)")


def shape_key(out_features: int, in_features: int) -> str:
    return f"{out_features}x{in_features}"


class S2Shared(Shared):
    """One trainable (A, B) pair per distinct layer shape."""

    def __init__(self, config: S2LoRAConfig, shapes, seed):
        super().__init__(config, shapes, seed)
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for o, i in dict.fromkeys(shapes.values()):
            a = torch.empty(config.r, i)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=rng.generator(a.device))
            self.A[shape_key(o, i)] = nn.Parameter(a)
            self.B[shape_key(o, i)] = nn.Parameter(torch.zeros(o, config.r))


class S2LoRALayer(VariantLayer):
    def __init__(self, base: nn.Linear, config: S2LoRAConfig, shared: S2Shared = None, name: str = ""):
        super().__init__(base, config, shared, name)
        self.key = shape_key(base.out_features, base.in_features)
        self.coef = nn.Parameter(torch.ones(config.r, device=base.weight.device, dtype=base.weight.dtype))

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.r

    def factors(self):
        return self.shared.B[self.key] * (self.coef * self.scaling), self.shared.A[self.key]

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.shared.A[self.key]) * (self.coef * self.scaling), self.shared.B[self.key])

    def inspect(self):
        return {"gates": self.coef.detach().clone(), "rank": (self.coef.detach() != 0).sum().float()}


@register("s2-lora", family="tiny", paper=PAPER)
class S2LoRA(Variant):
    summary = ("One LoRA pair (A, B) shared by all layers; each layer learns only r coefficients that weight the "
               "pair's ranks, pushed to exact zeros by an L1 proximal step. The surviving coefficients show a learned "
               "rank distribution across the model at a tiny parameter cost.")
    formula = (r"$\Delta W_\ell = \frac{\alpha}{r} B\,\mathrm{diag}(\lambda_\ell)\,A,\quad A, B$ shared,"
               r" $\lambda_\ell$ sparse")
    Config = S2LoRAConfig
    Layer = S2LoRALayer
    SharedModule = S2Shared
    dynamic = True
    example_config = {"r": 4}
    notes = "Sparsity by SoRA's proximal step (penalty form not confirmed); one shared pair per layer shape."
    reconstruction = ("the sharing and the sparsity: one shared (A, B) per layer shape and per-layer rank "
                      "coefficients made sparse by an L1 proximal step (strength γ = 0.1 our choice)")

    def param_groups(self, adaptation, lr, weight_decay):
        return with_gate_group(adaptation, [layer.coef for _, layer in adaptation.named_layers()], lr, weight_decay)

    def on_step(self, ctx):
        adaptation, optimizer = ctx.adaptation, ctx.optimizer
        soft_threshold_([layer.coef for _, layer in adaptation.named_layers()], optimizer, self.config.lam)
