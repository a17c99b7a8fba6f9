"""SoRA: Sparse Low-Rank Adaptation.

Ding et al., EMNLP 2023, "Sparse Low-rank Adaptation of Pre-trained Language Models", arXiv:2311.11696.

ΔW = s · B diag(g) A with a gate g ∈ R^{r_max} between the factors (Eq. (4)); A Kaiming-uniform, B = 0, g ~ N(0, 1)
and s = α/r_max as in the official code (α = 16, r_max = 8). After every optimizer step the gate takes the proximal
step of the L1 penalty, a soft threshold (Eq. (6)–(7)):

    g ← sign(g) · max(|g| − η_t·λ, 0),

with η_t the gate's current learning rate; ranks whose gate reaches 0 stay there unless the gradient pushes them
back out. The gate has its own parameter group with no weight decay (the code's separate gate optimizer). The
*sparsifying scheduler* (Algorithm 1) raises λ over training; ``schedule="linear"`` ramps λ from 0 to ``lam``
across the run, a continuous version of the paper's phases.

After training, :func:`compact` drops the zeroed ranks and folds g into B (§3.3): a plain LoRA of rank nnz(g) per
module with identical outputs.

Simplified or not confirmed: the released code uses the threshold ξ as a raw constant per step (``sparse_lambda_2``;
its ``sparse_optimizer_multiply_lr.py`` uses η·ξ, as here) and adds an extra λ_L1·mean|g| term to the loss; this
follows the paper's proximal form (threshold η·λ) and has no extra L1 term. The released optimizer also does not
apply the soft threshold itself but three in-place masked updates in sequence (g[g > ξ] −= ξ; g[g < −ξ] += ξ;
g[|g| < ξ] = 0), whose last mask re-tests the shifted values: every |g| < 2ξ ends at zero, a dead zone twice the
proximal one, with a jump from 0 to ±ξ at |g| = 2ξ. ``shrink="three-mask"`` runs that form (same ξ = η·λ);
the default stays ``"soft"``, the proximal operator of the L1 penalty that the paper's Eq. (6)–(7) and its analysis
use, which is the form that defines the method rather than a detail of one implementation. The phase-wise
restarts of Algorithm 1 (with memorisation/generalisation logging per phase) are replaced by the continuous ramp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ... import rng
from ...settings import Preset
from ...variant import Variant, VariantConfig, param, register
from .gated import SHRINKS, GatedLowRankLayer, soft_threshold_, with_gate_group

PAPER = "Ding et al., 2023, Sparse Low-rank Adaptation of Pre-trained Language Models, EMNLP 2023, arXiv:2311.11696"


@dataclass
class SoRAConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="maximum rank r_max (the gate's length)")
    alpha: float = param(16.0, low=0, low_open=True, help="scale numerator: s = alpha / r_max")
    lam: float = param(0.1, low=0.0, help="L1 strength λ: the proximal threshold is lr · λ per step")
    weight_decay: float = param(0.1, low=0.0, help="AdamW weight decay of A and B (the scripts' 0.1); it stops B from "
                                                   "growing to undo the shrinking gate")
    schedule: str = param("constant", choices=("constant", "linear"),
                          help="λ constant, or ramped from 0 to lam over training (sparsifying scheduler)")
    shrink: str = param("soft", choices=SHRINKS,
                        help="soft: the paper's proximal soft threshold; three-mask: the released optimizer's three "
                             "in-place masked updates (dead zone 2ξ)")


class SoRALayer(GatedLowRankLayer):
    def __init__(self, base: nn.Linear, config: SoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=rng.generator(self.lora_A.device))
        with torch.no_grad():
            self.gate.normal_(generator=rng.generator(self.gate.device))
        self.compacted = False

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.r

    def compact(self) -> None:
        """Drop zero-gate ranks and fold the gate into B: the same ΔW with nnz(g)·(in+out) parameters."""
        with torch.no_grad():
            keep = self.gate.detach() != 0
            b = self.lora_B[:, keep] * self.gate[keep]
            self.lora_A = nn.Parameter(self.lora_A[keep].clone())
            self.lora_B = nn.Parameter(b.clone())
            self.gate = nn.Parameter(torch.ones_like(self.gate[keep]), requires_grad=False)
        self.compacted = True


def compact(adaptation) -> None:
    """Prune every SoRA layer of ``adaptation`` in place (see :meth:`SoRALayer.compact`)."""
    for _, layer in adaptation.named_layers():
        layer.compact()


@register("sora", family="rank", paper=PAPER)
class SoRA(Variant):
    summary = ("LoRA with a gate vector g between B and A. An L1 proximal step after every update pushes gates to "
               "exactly zero, so each module keeps only the ranks it needs; the zeroed ranks are then cut away, "
               "leaving a smaller plain LoRA with the same outputs.")
    formula = (r"$W = W_0 + \frac{\alpha}{r_{max}} B\,\mathrm{diag}(g)\,A,\quad "
               r"g \leftarrow \mathrm{sign}(g)\max(|g| - \eta\lambda, 0)$")
    Config = SoRAConfig
    Layer = SoRALayer
    dynamic = True
    example_config = {"r": 6, "lam": 0.5}
    notes = ("Proximal threshold η·λ as in the paper (the code's raw per-step ξ and extra L1 loss term are not used); "
             "the default shrink is the paper's soft threshold, and shrink='three-mask' runs the released optimizer's "
             "three in-place masks (dead zone 2ξ); the phase-wise sparsifying scheduler is a continuous linear ramp "
             "of λ.")
    presets = (
        Preset("synthetic:*", config={"r": 16, "lam": 0.5}, settings={"steps": 400},
               reason="λ 0.5, r_max 16, 400 steps: the threshold is lr·λ per step, and at the paper's λ 0.1 (tuned "
                      "for 10k-step GLUE runs) 200 steps close no gate; r_max 16 lets a rank-16 layer show it"),
    )

    def param_groups(self, adaptation, lr, weight_decay):
        gates = [layer.gate for _, layer in adaptation.named_layers()]
        return with_gate_group(adaptation, gates, lr, weight_decay, max(weight_decay, self.config.weight_decay))

    def current_lambda(self, step: int, total_steps: int) -> float:
        if self.config.schedule == "linear":
            return self.config.lam * min(1.0, (step + 1) / max(total_steps, 1))
        return self.config.lam

    def on_step(self, ctx):
        adaptation, step, optimizer = ctx.adaptation, ctx.step, ctx.optimizer
        gates = [layer.gate for _, layer in adaptation.named_layers()]
        soft_threshold_(gates, optimizer, self.current_lambda(step, ctx.total_steps), self.config.shrink)

__all__ = ["SoRA", "SoRALayer", "compact"]
