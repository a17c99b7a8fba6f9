"""Bayesian-LoRA: LoRA with differentiable rank gates learned under a sparsity prior.

Meo et al., WANT@ICML 2024, "Bayesian-LoRA: LoRA based Parameter Efficient Fine-Tuning using Optimal Quantization
levels and Rank Values through Differentiable Bayesian Gates", arXiv:2406.13046. ΔW = P diag(λ ⊙ z) Q in AdaLoRA's
SVD form (P, Q ~ N(0, 0.02²), λ = 0, scale α/r), where every rank k has a gate z_k ∈ [0, 1] with a hard-concrete
distribution (Louizos et al., 2018, Eq. (10)–(13)): a learnable log α_k, temperature β = 2/3 and stretch
(γ, ζ) = (−0.1, 1.1). Gates are sampled while training, s = σ((log u − log(1−u) + log α)/β), z = clip(s(ζ−γ)+γ, 0, 1),
and at test time set to the deterministic ẑ = clip(σ(log α)(ζ−γ)+γ, 0, 1), thresholded at 0.5 to a hard 0/1. Only the
training *forward pass* samples; ``factors()``, ``delta_weight()`` (so ``merge()``/``unmerge()``) and the probes use ẑ
in either mode, so merging in training mode folds in the test-time ΔW and unmerging removes the same one.
The loss adds λ_prior times the expected fraction of active rank parameters, Σ_k P(z_k ≠ 0)·cost_k / Σ_k cost_k with
P(z_k ≠ 0) = σ(log α_k − β log(−γ/ζ)) and cost_k = d_in + d_out (the parameters a rank costs).

Not implemented / not confirmed (the full text was not available here): the quantization-level gates (Bayesian-Bits
style: a gated sum of residuals x₂ + z₄(ε₄ + z₈(ε₈ + …)) per matrix, the abstract's "prior distribution on both
quantization levels and rank values" and its ~70% fewer bit operations) — they wait for the quantizer that issue 20
shares between QWHA and LQ-LoRA; the exact prior and cost normalisation of the paper (bit operations for
quantization gates) — this uses the expected-parameters form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ... import rng
from ...settings import Preset
from ...variant import Variant, VariantConfig, param, register
from .gated import GatedLowRankLayer

PAPER = ("Meo et al., 2024, Bayesian-LoRA: LoRA based Parameter Efficient Fine-Tuning using Optimal Quantization "
         "levels and Rank Values through Differentiable Bayesian Gates, WANT@ICML 2024, arXiv:2406.13046")
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


@dataclass
class BayesianLoRAConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="maximum rank (number of gates)")
    alpha: float = param(16.0, low=0, low_open=True, help="scale numerator: s = alpha / r")
    prior: float = param(0.03, low=0.0, help="λ_prior: weight of the expected fraction of active rank parameters")
    init_log_alpha: float = param(3.0, help="initial gate log α (3: gates start open with P ≈ 0.97)")


def open_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z ≠ 0) of a hard-concrete gate."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


class BayesianLoRALayer(GatedLowRankLayer):
    def __init__(self, base: nn.Linear, config: BayesianLoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        with torch.no_grad():
            self.lora_A.normal_(0.0, 0.02, generator=rng.generator(self.lora_A.device))
            self.lora_B.normal_(0.0, 0.02, generator=rng.generator(self.lora_B.device))
        self.log_alpha = nn.Parameter(torch.full((config.r,), float(config.init_log_alpha),
                                                 device=base.weight.device, dtype=base.weight.dtype))

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.r

    def sampled_gate(self) -> torch.Tensor:
        """One hard-concrete draw z = clip(σ((log u − log(1−u) + log α)/β)(ζ−γ)+γ, 0, 1), differentiable in log α."""
        u = torch.rand(self.log_alpha.shape, device=self.log_alpha.device, dtype=self.log_alpha.dtype,
                       generator=rng.generator(self.log_alpha.device)).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def eval_gate(self) -> torch.Tensor:
        """The deterministic test-time gate: ẑ = clip(σ(log α)(ζ−γ)+γ, 0, 1) thresholded at 0.5 to 0/1."""
        z = (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
        return (z > 0.5).to(z.dtype)

    def gate_values(self) -> torch.Tensor:
        """What the forward pass uses: a fresh draw while training, the test-time gate otherwise."""
        return self.sampled_gate() if self.training else self.eval_gate()

    def effective_gate(self) -> torch.Tensor:
        """λ ⊙ ẑ with the deterministic gate: what ``factors()``, ``delta_weight()``, ``merge()`` and the probes see,
        in either mode, so that merge and unmerge add and subtract the same ΔW."""
        return self.gate * self.eval_gate()

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The only place a gate is sampled: training forwards draw z, eval forwards use ẑ."""
        g = self.gate * self.gate_values()
        return F.linear(F.linear(x, self.lora_A) * (g * self.scaling), self.lora_B)

    def active(self) -> torch.Tensor:
        with torch.no_grad():
            s = torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA
        return s.clamp(0, 1) > 0.5

    def inspect(self):
        return {"gates": open_probability(self.log_alpha).detach().clone(), "rank": self.active().sum().float(),
                "singular_values": self.gate.detach().clone()}


@register("bayesian-lora", family="rank", paper=PAPER)
class BayesianLoRA(Variant):
    summary = ("AdaLoRA's SVD form with a learnable on/off gate on every rank. Gates are random while training "
               "(a relaxed Bernoulli you can differentiate) and a prior charges each open gate its parameter cost, "
               "so unneeded ranks switch off and every module ends with the rank it needs.")
    formula = (r"$\Delta W = \frac{\alpha}{r} P\,\mathrm{diag}(\lambda \odot z)\,Q,\quad z_k \sim"
               r" \mathrm{HardConcrete}(\log\alpha_k)$")
    Config = BayesianLoRAConfig
    Layer = BayesianLoRALayer
    dynamic = True
    example_config = {"r": 4}
    notes = ("Rank gates only: the quantization-level gates (for quantized bases) are not implemented; the prior is "
             "the expected fraction of active rank parameters (paper's exact prior not confirmed). Gates are sampled "
             "in the training forward pass only; factors(), delta_weight() and merge() use the test-time gate.")
    presets = (
        Preset("synthetic:*", config={"r": 16, "prior": 0.1}, settings={"steps": 600},
               reason="prior 0.1, 600 steps: gates start at log α = 3 and Adam moves log α about lr per step, so in "
                      "200 steps at prior 0.03 no gate closes; r 16 lets a rank-16 layer show it"),
        Preset("synthetic:lowrank", config={"r": 16, "prior": 0.3}, settings={"steps": 600},
               reason="prior 0.3: on two rank-4 layers the sampled gates' data gradient outweighs 0.1 (1 of 16 "
                      "gates closes); 0.3 closes about half and still fits (rel_error 0.003)"),
    )

    def regularizer(self, ctx):
        adaptation = ctx.adaptation
        if self.config.prior == 0:
            return None
        expected, total = 0.0, 0.0
        for _, layer in adaptation.named_layers():
            cost = layer.in_features + layer.out_features
            expected = expected + open_probability(layer.log_alpha).sum() * cost
            total += cost * layer.r
        return self.config.prior * expected / total
