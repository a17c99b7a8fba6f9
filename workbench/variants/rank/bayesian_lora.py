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

Quantization gates (``quantize=True``; the paper's second set of gates, Bayesian Bits, van Baalen et al., NeurIPS
2020). Each adapted matrix, Q = A (r × d_in) and P = B (d_out × r) of every layer, is fake-quantized with nested bit
levels 2, 4, 8, 16, 32 (:func:`workbench.quant.nested_residuals`, the quantizer shared with QWHA and LQ-LoRA):

    x_q = x₂ + z₄(ε₄ + z₈(ε₈ + z₁₆(ε₁₆ + z₃₂ ε₃₂))),

x₂ the 2-bit RTN of the matrix on its [min, max] range, ε_{2b} the b-bit error quantized on a grid 2^b + 1 times finer
(so x₂ + ε₄ + … + ε_b is exactly the b-bit RTN), and z₄ … z₃₂ hard-concrete gates of their own (four per matrix,
log α initialised to ``init_bit_log_alpha`` = 6, the official ``gamma_*_init``). Rounding is straight-through while
training (∂x_q/∂W = 1; the gates get ∂L/∂z_b = ⟨∂L/∂W_q, ε_b + z_{2b}(…)⟩). The training forward pass samples the
gates; at test time (and in ``factors()``, ``delta_weight()``, ``merge()``) a gate is on iff P(z_b ≠ 0) > 0.66, the
official ``hc_thres`` rule (on iff P(z = 0) < 0.34), so merge and unmerge still cancel in training mode. The learned
bits of a matrix are the top level before the first closed gate. The prior is the official Bayesian Bits regulariser,
Σ_matrices Σ_{b ≥ 4} (Π_{b' ≤ b} P(z_{b'} ≠ 0)) · cost_b: with ``bit_cost="bops"`` cost_b = b · MACs_m (the
``reg_type="bops"`` form), with ``"const"`` cost_b = 1 (the official default ``reg_type="const"``); here divided by
its value with every gate open so that ``quant_prior`` is a fraction as ``prior`` is (the code adds the raw sum
times ``quantization_lmbd`` = 10⁻³). :func:`adapter_bops` counts the adapter's bit operations, the paper's metric:
Σ_matrices (weight bits × activation bits × MACs) per input token, active ranks only (MACs of A: r_active·d_in,
of B: d_out·r_active), activations assumed at ``ACTIVATION_BITS`` = 16 bits (the code also gates the activations;
here they stay in floating point), unquantized weights at 32 bits.

Simplifications against the official code (KseniaSycheva/peft, ``tuners/blora`` with its Bayesian Bits package):
the code learns the 2-bit scale s₂ (``scales_type="scale"``, lr 10⁻²) and quantizes the singular values E and the
activations as well; here each matrix's range is its own per-tensor [min, max] (``quant_group`` = 0, or groups of
that many inputs per row as QWHA's RTN), recomputed every step without gradient, λ stays in floating point (it starts
at 0, a degenerate range), and gates with log α ≤ −2 are not forced shut as the code's ``get_gates`` does (the
deterministic rule shuts them anyway). The code's rank gates are nested too (``rank_prior``: rank k is on only if
every rank before it is, cumulative products of the gate probabilities); the rank gates here are independent.

Measured on synthetic:mixed at its preset (r 16, prior 0.1, 600 steps; seeds 0, 1, 2): ``quant_prior`` 0.01 (the
default) learns 4–8 bits (mean 6.3–7.0), final rel_error 0.0068/0.0078/0.0070 against 0.0052/0.0069/0.0068 without
quantization, and 75–78% fewer BOPs than the same run unquantized (90% fewer than every rank at 32 bits); 0.1 drives
the bits to 2–4 (mean 3.5–4.0) at 2.5–3.6× the error. The data gradient of a gate is ⟨∂L/∂W_q, ε_b + …⟩, small for
the fine levels, so the prior weight sets the bits almost alone: the official λ = 10⁻³ on a raw sum is a different
scale from this normalised fraction.

``quantize`` is off by default, unlike the code (``quantize=True``): the synthetic tasks have full-precision targets,
and issue 12's rank-allocation results, presets and documented numbers are measured without it and stay unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ... import quant, rng
from ...settings import Preset
from ...variant import Variant, VariantConfig, param, register
from .gated import GatedLowRankLayer

PAPER = ("Meo et al., 2024, Bayesian-LoRA: LoRA based Parameter Efficient Fine-Tuning using Optimal Quantization "
         "levels and Rank Values through Differentiable Bayesian Gates, WANT@ICML 2024, arXiv:2406.13046")
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
#: bits assumed for the activations in :func:`adapter_bops` (fp16/bf16 inputs; the code can gate them, this cannot)
ACTIVATION_BITS = 16
#: bits of an unquantized weight in :func:`adapter_bops` (fp32 training)
FULL_BITS = 32
#: a quantization gate is on at test time iff P(z = 0) < 1 − this (the official ``hc_thres`` = 0.34)
BIT_GATE_THRESHOLD = 0.66
#: the two gated matrices of a layer, in the order of ``bit_log_alpha``'s rows
MATRICES = ("A", "B")


@dataclass
class BayesianLoRAConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="maximum rank (number of gates)")
    alpha: float = param(16.0, low=0, low_open=True, help="scale numerator: s = alpha / r")
    prior: float = param(0.03, low=0.0, help="λ_prior: weight of the expected fraction of active rank parameters")
    init_log_alpha: float = param(3.0, help="initial gate log α (3: gates start open with P ≈ 0.97)")
    quantize: bool = param(False, help="quantization gates: A and B fake-quantized with nested 2/4/8/16/32-bit levels "
                                       "whose residuals are gated (off: full-precision factors)")
    max_bits: int = param(32, choices=(4, 8, 16, 32), help="top quantization level (levels 2, 4, … up to it)")
    quant_prior: float = param(0.01, low=0.0, help="weight of the bit prior: the expected gated cost as a fraction "
                                                  "of its value with every level on")
    bit_cost: str = param("bops", choices=("bops", "const"),
                          help="cost of a level: bops, b × MACs of the matrix; const, 1 (the code's default)")
    quant_group: int = param(0, low=0, help="inputs of a row sharing one quantization range (0: one per matrix)")
    init_bit_log_alpha: float = param(6.0, help="initial log α of the quantization gates (the code's 6: open)")


def open_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z ≠ 0) of a hard-concrete gate."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def sample_hard_concrete(log_alpha: torch.Tensor) -> torch.Tensor:
    """One hard-concrete draw z = clip(σ((log u − log(1−u) + log α)/β)(ζ−γ)+γ, 0, 1), differentiable in log α."""
    u = torch.rand(log_alpha.shape, device=log_alpha.device, dtype=log_alpha.dtype,
                   generator=rng.generator(log_alpha.device)).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def bit_levels(max_bits: int) -> tuple[int, ...]:
    """The nested levels 2, 4, … up to ``max_bits``."""
    return tuple(b for b in quant.NESTED_BITS if b <= max_bits)


def learned_bits(gates: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """Bits of each row of 0/1 ``gates`` (one column per residual level): the level before the first closed gate."""
    on = torch.cumprod((gates > 0).to(torch.long), dim=-1).sum(-1)
    return torch.tensor(levels, device=gates.device, dtype=torch.float32)[on]


class BayesianLoRALayer(GatedLowRankLayer):
    def __init__(self, base: nn.Linear, config: BayesianLoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        with torch.no_grad():
            self.lora_A.normal_(0.0, 0.02, generator=rng.generator(self.lora_A.device))
            self.lora_B.normal_(0.0, 0.02, generator=rng.generator(self.lora_B.device))
        self.log_alpha = nn.Parameter(torch.full((config.r,), float(config.init_log_alpha),
                                                 device=base.weight.device, dtype=base.weight.dtype))
        if config.quantize:
            self.levels = bit_levels(config.max_bits)
            self.bit_log_alpha = nn.Parameter(torch.full((len(MATRICES), len(self.levels) - 1),
                                                         float(config.init_bit_log_alpha), device=base.weight.device,
                                                         dtype=base.weight.dtype))

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.r

    def sampled_gate(self) -> torch.Tensor:
        """One hard-concrete draw of the rank gates (:func:`sample_hard_concrete`)."""
        return sample_hard_concrete(self.log_alpha)

    def eval_gate(self) -> torch.Tensor:
        """The deterministic test-time gate: ẑ = clip(σ(log α)(ζ−γ)+γ, 0, 1) thresholded at 0.5 to 0/1."""
        z = (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
        return (z > 0.5).to(z.dtype)

    def gate_values(self) -> torch.Tensor:
        """What the forward pass uses: a fresh draw while training, the test-time gate otherwise."""
        return self.sampled_gate() if self.training else self.eval_gate()

    # -- quantization gates ---------------------------------------------------------------------------------
    @property
    def quantized(self) -> bool:
        return bool(self.config.quantize)

    def bit_gates(self, sample: bool = False) -> torch.Tensor:
        """(2, levels − 1) gates z₄ … of A and B: a hard-concrete draw with ``sample``, else the test-time 0/1 rule
        P(z ≠ 0) > 0.66."""
        if sample:
            return sample_hard_concrete(self.bit_log_alpha)
        return (open_probability(self.bit_log_alpha) > BIT_GATE_THRESHOLD).to(self.bit_log_alpha.dtype)

    def bits(self) -> torch.Tensor:
        """Learned bits of A and B (test-time gates); 32 for both when quantization is off."""
        if not self.quantized:
            return torch.full((len(MATRICES),), float(FULL_BITS))
        return learned_bits(self.bit_gates().detach(), self.levels)

    def _quantize(self, w: torch.Tensor, gates: torch.Tensor, straight_through: bool) -> torch.Tensor:
        terms = quant.nested_residuals(w, self.config.quant_group, self.levels, straight_through=straight_through)
        return quant.gated_residual_sum(terms, gates)

    def weights(self, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as the adapter uses them: gated nested quantization when ``quantize`` (sampled gates and
        straight-through rounding with ``sample``), the raw factors otherwise."""
        if not self.quantized:
            return self.lora_A, self.lora_B
        z = self.bit_gates(sample)
        return self._quantize(self.lora_A, z[0], sample), self._quantize(self.lora_B, z[1], sample)

    def factors(self):
        a, b = self.weights(sample=False)
        return b * (self.effective_gate() * self.scaling), a

    def bops(self, activation_bits: int = ACTIVATION_BITS) -> float:
        """Bit operations of this adapter per input token: Σ_{A,B} weight bits × activation bits × MACs, with the
        active ranks only (A: r_active·d_in MACs, B: d_out·r_active)."""
        r = float(self.active().sum())
        macs = torch.tensor([r * self.in_features, r * self.out_features])
        return float((self.bits().cpu() * macs).sum() * activation_bits)

    def bit_prior(self) -> tuple[torch.Tensor, float]:
        """(expected cost, cost with every level on) of the Bayesian Bits prior for this layer's two matrices:
        Σ_m Σ_{b ≥ 4} Π_{b' ≤ b} P(z_{b'} ≠ 0) · cost_{m,b}, cost b·MACs_m (``bops``) or 1 (``const``), MACs at the
        full rank r (the expectation is differentiable in the bit gates only)."""
        q = torch.cumprod(open_probability(self.bit_log_alpha), dim=-1)
        levels = torch.tensor(self.levels[1:], device=q.device, dtype=q.dtype)
        if self.config.bit_cost == "bops":
            macs = torch.tensor([self.r * self.in_features, self.r * self.out_features], device=q.device,
                                dtype=q.dtype)
            cost = macs[:, None] * levels[None, :]
        else:
            cost = torch.ones_like(q)
        return (q * cost).sum(), float(cost.sum())

    def effective_gate(self) -> torch.Tensor:
        """λ ⊙ ẑ with the deterministic gate: what ``factors()``, ``delta_weight()``, ``merge()`` and the probes see,
        in either mode, so that merge and unmerge add and subtract the same ΔW."""
        return self.gate * self.eval_gate()

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The only place gates are sampled: training forwards draw z (rank and bit gates), eval forwards use ẑ."""
        g = self.gate * self.gate_values()
        a, b = self.weights(sample=self.training)
        return F.linear(F.linear(x, a) * (g * self.scaling), b)

    def active(self) -> torch.Tensor:
        with torch.no_grad():
            s = torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA
        return s.clamp(0, 1) > 0.5

    def inspect(self):
        views = {"gates": open_probability(self.log_alpha).detach().clone(), "rank": self.active().sum().float(),
                 "singular_values": self.gate.detach().clone()}
        if self.quantized:
            bits = self.bits()
            views.update({f"bits_{m}": bits[i] for i, m in enumerate(MATRICES)})
            views["bits"] = bits
            views["bit_gates"] = open_probability(self.bit_log_alpha).detach().flatten().clone()
            views["bops"] = torch.tensor(self.bops())
        return views


def adapter_bops(adaptation, activation_bits: int = ACTIVATION_BITS) -> float:
    """Bit operations of the whole adapter per input token (Σ over layers of :meth:`BayesianLoRALayer.bops`):
    weight bits (learned, or 32 without quantization) × ``activation_bits`` × MACs of the active ranks."""
    return sum(layer.bops(activation_bits) for _, layer in adaptation.named_layers())


def full_bops(adaptation, activation_bits: int = ACTIVATION_BITS) -> float:
    """The reference of the BOPs reduction: every rank of every layer, 32-bit weights."""
    return sum(FULL_BITS * activation_bits * layer.r * (layer.in_features + layer.out_features)
               for _, layer in adaptation.named_layers())


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
    notes = ("Rank gates independent (the code nests them, rank k on only if all before it are). Quantization gates "
             "(quantize=True, off by default) on A and B with nested 2/4/8/16/32-bit RTN levels and the official "
             "Bayesian Bits prior normalised to a fraction; the code also learns the 2-bit scale and quantizes the "
             "singular values and activations, here ranges are each matrix's min/max and activations stay fp "
             "(16 bits assumed in BOPs). Gates are sampled in the training forward pass only; factors(), "
             "delta_weight() and merge() use the test-time gates.")
    presets = (
        Preset("synthetic:*", config={"r": 16, "prior": 0.1}, settings={"steps": 600},
               reason="prior 0.1, 600 steps: gates start at log α = 3 and Adam moves log α about lr per step, so in "
                      "200 steps at prior 0.03 no gate closes; r 16 lets a rank-16 layer show it"),
        Preset("synthetic:lowrank", config={"r": 16, "prior": 0.3}, settings={"steps": 600},
               reason="prior 0.3: on two rank-4 layers the sampled gates' data gradient outweighs 0.1 (1 of 16 "
                      "gates closes); 0.3 closes about half and still fits (rel_error 0.003)"),
    )

    def regularizer(self, ctx):
        terms = [t for t in (self.rank_regularizer(ctx.adaptation), self.bit_regularizer(ctx.adaptation))
                 if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def rank_regularizer(self, adaptation):
        """λ_prior · expected fraction of active rank parameters."""
        if self.config.prior == 0:
            return None
        expected, total = 0.0, 0.0
        for _, layer in adaptation.named_layers():
            cost = layer.in_features + layer.out_features
            expected = expected + open_probability(layer.log_alpha).sum() * cost
            total += cost * layer.r
        return self.config.prior * expected / total

    def bit_regularizer(self, adaptation):
        """quant_prior · the Bayesian Bits prior over every matrix, as a fraction of its all-open value."""
        if not self.config.quantize or self.config.quant_prior == 0:
            return None
        expected, total = 0.0, 0.0
        for _, layer in adaptation.named_layers():
            e, t = layer.bit_prior()
            expected, total = expected + e, total + t
        return self.config.quant_prior * expected / total
