"""CoDyRA: Dynamic Rank-Selective LoRA for continual learning.

Lu et al., 2024–25, "Adaptive Rank, Reduced Forgetting: Knowledge Retention in Continual Learning Vision-Language
Models with Dynamic Rank-Selective LoRA", arXiv:2412.01004 (official code: Artificer-AI-Lab/CoDyRA). Every linear
gets ΔW = B diag(g) A (scale 1, rank 16; A Kaiming-uniform, B = 0, g ~ N(0, 1); A, B and g all train). Per task:

* the first half of training is dense;
* then every optimizer step is followed by a threshold on all gates with the code's raw κ (not scaled by the
  learning rate; the paper calls it importance-aware sparsity-promoting regularisation). κ steps up through
  linspace(0, κ_max, 50) as in the code's ``train_model``, which raises its level index to 1 at iteration T_dense
  (thresholding starts after it) and by one every (T − T_dense)/50 iterations, capped at κ_max; so the first
  thresholded step already uses κ_max/49 (level 1; before issue 14 this started at level 0, κ = 0). The code's
  integer interval ``(T − T_dense)//50`` is 0 for runs with fewer than 50 sparse steps, where its κ never leaves 0;
  here the levels are spread over whatever steps there are, equal to the code when 50 divides T − T_dense and the
  interval divides T_dense (T = 1000 and 600 are tested);
* the threshold form (``shrink``): the code does not soft-threshold but applies three in-place masked updates,
  g[g > κ] −= κ; g[g < −κ] += κ; g[|g| < κ] = 0, which zeroes every |g| < 2κ (a dead zone of 2κ); that is the
  default here (``shrink="three-mask"``), since this variant follows the released code where the paper gives no
  operator; ``shrink="soft"`` is the proximal soft threshold sign(g)·max(|g| − κ, 0);
* at the end of the task, ranks with g = 0 are dropped and B diag(g) A is merged into W (``merge_and_unload()``), and
  the next task starts a fresh adapter: no replay and no inference overhead.

``train_continual`` runs that loop over a task's stages (``digits:continual``) and reports accuracy on every stage
after each one, for CoDyRA or any other variant merged the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from ... import rng
from ...variant import Variant, VariantConfig, param, register
from .gated import SHRINKS, GatedLowRankLayer, shrink_

PAPER = ("Lu et al., 2024, Adaptive Rank, Reduced Forgetting: Knowledge Retention in Continual Learning "
         "Vision-Language Models with Dynamic Rank-Selective LoRA, arXiv:2412.01004")
LEVELS = 50


@dataclass
class CoDyRAConfig(VariantConfig):
    r: int = param(16, low=1, high=min, help="rank per module (per task)")
    kappa_max: float = param(5e-3, low=0.0, help="largest threshold κ (the script's 0.005)")
    dense_fraction: float = param(0.5, low=0.0, high=1.0, help="fraction of each task trained without thresholding")
    shrink: str = param("three-mask", choices=SHRINKS,
                        help="three-mask: the code's three in-place masked updates (dead zone 2κ); soft: the proximal "
                             "soft threshold")


class CoDyRALayer(GatedLowRankLayer):
    def __init__(self, base: nn.Linear, config: CoDyRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=rng.generator(self.lora_A.device))
        with torch.no_grad():
            self.gate.normal_(generator=rng.generator(self.gate.device))

    @property
    def scaling(self) -> float:
        return 1.0


@register("codyra", family="rank", paper=PAPER)
class CoDyRA(Variant):
    summary = ("For continual learning: each task trains a gated low-rank update whose gates are shrunk to exactly "
               "zero in the second half of training, so each module keeps only the ranks the task needs; the update "
               "is merged into the weights at the end of the task, which disturbs earlier tasks less than a "
               "full-rank-budget LoRA.")
    formula = (r"$\Delta W = B\,\mathrm{diag}(g)\,A,\quad g \leftarrow \mathrm{sign}(g)\max(|g| - \kappa_t,"
               r" 0),\ \kappa_t \uparrow \kappa_{max}$")
    Config = CoDyRAConfig
    Layer = CoDyRALayer
    dynamic = True
    example_config = {"r": 4, "kappa_max": 0.05}
    notes = ("Raw κ threshold, its 50 levels starting at level 1 on the first thresholded step, and the three "
             "in-place masks (dead zone 2κ; shrink='soft' for the proximal form), as in the code; the CLIP image-text "
             "losses are replaced by each task's own loss.")

    def kappa(self, step: int, total: int) -> float:
        """κ after optimizer step ``step`` (0-based): 0 through the dense phase (the code prunes at steps > T_dense),
        then linspace(0, κ_max, 50)[level] with level = 1 + (step − T_dense)·50 // (T − T_dense), capped at 49."""
        dense = int(self.config.dense_fraction * total)
        if step <= dense:
            return 0.0
        level = min(LEVELS - 1, 1 + (step - dense) * LEVELS // max(total - dense, 1))
        return self.config.kappa_max * level / (LEVELS - 1)

    def on_step(self, ctx):
        adaptation, step = ctx.adaptation, ctx.step
        kappa = self.kappa(step, ctx.total_steps)
        if kappa == 0:
            return
        shrink_([layer.gate for _, layer in adaptation.named_layers()], kappa, self.config.shrink)


def train_continual(stages, variant: str, *, steps: int, lr: float, seed: int = 0, split: str = "val",
                    **config) -> pd.DataFrame:
    """Train ``variant`` on each stage in turn, merging after each; one row per stage with accuracy on all stages
    (on ``split``: "val", or "test" for reporting, as the claims ledger does)."""
    from ...train import train

    model, rows = None, []
    for stage in stages:
        run = train(stage, variant, steps=steps, lr=lr, seed=seed, model=model, probes=(), progress=False, **config)
        active = sum(float(layer.inspect().get("rank", float("nan"))) for _, layer in run.adaptation.named_layers())
        model = run.adaptation.merge_and_unload()
        scores = stages[-1].evaluate(model, split=split)
        rows.append({"variant": variant, "after_stage": stage.current, "active_ranks": active,
                     **{k: v for k, v in scores.items() if k.startswith("accuracy/")}})
    return pd.DataFrame(rows)
