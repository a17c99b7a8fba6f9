"""AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning.

Zhang et al., ICLR 2023, arXiv:2303.10512. ΔW = P Λ Q in SVD form (Eq. (3)): P ∈ R^{out×r}, Λ = diag(λ),
Q ∈ R^{r×in}; λ starts at 0 and P, Q ~ N(0, 0.02²). Definitions and defaults follow PEFT 0.21's AdaLoRA
(``tuners/adalora``): the update is scaled by α/(r + 1e-5) with α = ``alpha``, and ranks are masked (λ_k set to 0),
never resized. One default differs: α = 32, the authors' (QingruZhang/AdaLoRA scripts: 32 for CoLA, MRPC, QNLI, RTE,
STS-B and BART XSum with init_r 12 → target 8, the ranks used here; 16 for MNLI, QQP, SST-2, SQuAD), where PEFT's
``AdaLoraConfig`` inherits LoRA's 8.

* Importance (Eq. (8)–(10)): for every entry, I = |w·∇w|, smoothed Ī ← β1 Ī + (1−β1) I, uncertainty
  Ū ← β2 Ū + (1−β2)|I − Ī|, score s = Ī·Ū. A triplet's score is s(λ_k) + mean_i s(P_ik) + mean_j s(Q_kj) (Eq. (11)).
* Budget (Eq. (12)): the total rank b(t) stays at r·modules for t ≤ tinit, falls cubically to target_r·modules by
  T − tfinal, then stays; every deltaT steps the lowest-scoring triplets across *all* modules are masked, and at
  t = T − tfinal the final mask is always applied, whether deltaT divides that step or not (PEFT's
  ``update_and_allocate(..., force_mask=True)``); the scores stop updating there, so the masks of the last tfinal
  steps are that final pattern (PEFT re-applies its saved ``rank_pattern``).
* Regularizer (Eq. (4)): γ·mean over tensors of ‖PᵀP − I‖_F and ‖QQᵀ − I‖_F (PEFT's ``orth_reg_weight`` = 0.5).

Tested against PEFT's AdaLoRA with the same tensors: forward, regularizer, budget schedule and masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ... import rng
from ...settings import Preset
from ...variant import ConfigError, Variant, VariantConfig, param, register
from .common import ImportanceEMA, orthogonality_regularizer
from .gated import GatedLowRankLayer

PAPER = ("Zhang et al., 2023, Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning, ICLR 2023, "
         "arXiv:2303.10512")


@dataclass
class AdaLoRAConfig(VariantConfig):
    r: int = param(12, low=1, high=min, help="initial rank per module (PEFT's init_r)")
    target_r: int = param(8, low=1, high=min, help="average rank per module at the end (the final budget)")
    alpha: float = param(32.0, low=0, low_open=True,
                         help="scale: ΔW = alpha/(r + 1e-5) · P Λ Q (the authors' scripts' 32; PEFT's default is 8)")
    tinit: int = param(0, low=0, help="steps of full budget before pruning starts")
    tfinal: int = param(0, low=0, help="last steps trained at the final budget")
    delta_t: int = param(1, low=1, help="steps between two budget allocations (deltaT)")
    beta1: float = param(0.85, low=0.0, high=1.0, low_open=True, help="EMA factor of the sensitivity")
    beta2: float = param(0.85, low=0.0, high=1.0, low_open=True, help="EMA factor of the uncertainty")
    orth_reg_weight: float = param(0.5, low=0.0, help="γ of the orthogonality regularizer")

    def check(self, shapes):
        if self.target_r > self.r:
            raise ConfigError(f"adalora: target_r={self.target_r} is invalid; target_r must be an integer in "
                              f"[1, r={self.r}] (the budget only shrinks)")


class AdaLoRALayer(GatedLowRankLayer):
    def __init__(self, base: nn.Linear, config: AdaLoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        with torch.no_grad():
            self.lora_A.normal_(0.0, 0.02, generator=rng.generator(self.lora_A.device))
            self.lora_B.normal_(0.0, 0.02, generator=rng.generator(self.lora_B.device))

    @property
    def scaling(self) -> float:
        return self.config.alpha / (self.config.r + 1e-5)


class Allocator:
    """PEFT's RankAllocator: importance EMAs per tensor, the cubic budget, and global masking."""

    def __init__(self, config: AdaLoRAConfig, n_modules: int, total_steps: int):
        self.config, self.total_steps = config, total_steps
        self.init_budget = config.r * n_modules
        self.target_budget = config.target_r * n_modules
        self.importance = ImportanceEMA(config.beta1, config.beta2)  # Ī, Ū per entry, keyed by id(tensor)

    def budget(self, step: int) -> tuple[int, bool]:
        c, total = self.config, self.total_steps
        if step <= c.tinit:
            return self.init_budget, False
        if step > total - c.tfinal:
            return self.target_budget, True
        mul = 1 - (step - c.tinit) / (total - c.tfinal - c.tinit)
        return int((self.init_budget - self.target_budget) * mul ** 3 + self.target_budget), step % c.delta_t == 0

    def update(self, tensors: list[nn.Parameter]) -> None:
        """Eq. (8)–(9) for every entry, from the sensitivity I = |w ⊙ ∇w| (tensors without a gradient are skipped)."""
        with torch.no_grad():
            for p in tensors:
                if p.grad is not None:
                    self.importance.update(id(p), (p * p.grad).abs())

    def score(self, p: nn.Parameter) -> torch.Tensor:
        """s = Ī · Ū per entry (Eq. (10)); zero for a tensor never updated."""
        return self.importance.score(id(p), default=torch.zeros_like(p))

    def triplet_scores(self, layer: AdaLoRALayer) -> torch.Tensor:
        return (self.score(layer.gate) + self.score(layer.lora_A).mean(dim=1)
                + self.score(layer.lora_B).mean(dim=0))

    def mask(self, layers: list[AdaLoRALayer], budget: int) -> None:
        scores = [self.triplet_scores(layer) for layer in layers]
        k = self.init_budget - budget
        if k <= 0:
            return
        threshold = torch.kthvalue(torch.cat(scores), k=k).values.item()
        with torch.no_grad():
            for layer, s in zip(layers, scores):
                layer.gate.masked_fill_(s <= threshold, 0.0)


@register("adalora", family="rank", paper=PAPER)
class AdaLoRA(Variant):
    summary = ("LoRA in SVD form, P Λ Q. Each triplet (a singular value with its two vectors) gets an importance "
               "score from |weight × gradient|, smoothed over steps. The total rank budget shrinks on a cubic "
               "schedule and the least important triplets across the whole model are switched off, so important "
               "modules keep more rank.")
    formula = (r"$W = W_0 + \frac{\alpha}{r} P\,\Lambda\,Q,\quad \Lambda = \mathrm{diag}(\lambda),\ \lambda_k \to 0$"
               r" when pruned")
    Config = AdaLoRAConfig
    Layer = AdaLoRALayer
    dynamic = True
    example_config = {"r": 6, "target_r": 3}
    notes = ("Matches PEFT 0.21's AdaLoRA (scaling α/(r+1e-5), masking of λ, RankAllocator schedule, the final mask "
             "forced at T − tfinal); α defaults to the authors' 32, not PEFT's 8.")
    presets = (
        Preset("synthetic:*", config={"target_r": 4, "tinit": 50, "tfinal": 50, "delta_t": 10,
                                      "orth_reg_weight": 0.001},
               reason="PEFT's tinit=tfinal=0, ΔT=1 re-mask every step, so ranks jump; γ 0.001: the unsquared "
                      "‖PᵀP−I‖ pull at 0.5 outweighs a 64-wide layer's loss gradient (loss 0.06 vs LoRA's 3e-5) "
                      "and drowns the |w·∇w| scores; target_r 4 so the budget (24) is below the true total"),
    )

    def __init__(self, config):
        super().__init__(config)
        self.allocator: Allocator | None = None

    def regularizer(self, ctx):
        adaptation = ctx.adaptation
        if self.config.orth_reg_weight == 0:
            return None
        layers = [layer for _, layer in adaptation.named_layers()]
        return orthogonality_regularizer(layers, self.config.orth_reg_weight, per="matrix")  # PEFT: mean over P, Q

    def on_step(self, ctx):
        adaptation, step = ctx.adaptation, ctx.step
        layers = [layer for _, layer in adaptation.named_layers()]
        if self.allocator is None:
            self.allocator = Allocator(self.config, len(layers), ctx.total_steps)
        total = self.allocator.total_steps
        if step < total - self.config.tfinal:
            self.allocator.update([p for layer in layers for p in (layer.lora_A, layer.lora_B, layer.gate)])
        budget, do_mask = self.allocator.budget(step)
        if do_mask or step == total - self.config.tfinal:  # PEFT forces the final mask at T − tfinal
            self.allocator.mask(layers, budget)
