"""The one weight quantizer of the workbench: what QWHA's frozen base and LQ-LoRA's Q are made with.

Two schemes, both "fake" quantizers (they return the dequantized weight, the tensor a kernel would rebuild):

* :func:`quantize` — per row, groups of ``group_size`` inputs share one scale: round-to-nearest between the group's
  min and max (``kind="rtn"``), or the nearest of 2^b symmetric normal quantiles times the group's absmax
  (``kind="nf"``). This is QWHA's quantizer (moved here from ``variants/frequency/qwha.py`` unchanged, so its
  numbers are the same).
* :func:`nf_quantize` — QLoRA's NormalFloat with block-wise absmax and double-quantized scales, as LQ-LoRA
  (Guo et al., ICLR 2024, §3.1; Dettmers et al., 2023, §3) configures it with :class:`NFConfig`
  ``(b, b0, B0, B1, b1)``. The flattened weight is cut into blocks of B0; each block's absmax s is its first-level
  scale; the scales, shifted by their minimum (a single stored number), are quantized in blocks of B1 to b0 unsigned
  integer bits, each such block keeping its absmax in b1 ∈ {fp32, fp16, bf16}; every entry then takes the nearest of
  the 2^b NF levels (:func:`normal_float_levels`: QLoRA's asymmetric quantiles with an exact zero, scaled to
  [−1, 1]) times its block's dequantized scale. Storage (LQ-LoRA Eq. (4)): b + b0/B0 + b1/(B0·B1) bits per
  parameter (:func:`bits_per_parameter`); :func:`storage_bits` counts the blocks of an actual tensor.

The official code (HanGuo97/lq-lora, ``quantization_utils.blockwise_absmax``) shifts the scales by their minimum and
quantizes them with NVIDIA's unsigned fake-quant (round(x·(2^b0−1)/absmax), clamped); the same is done here with
torch ops. It requires numel divisible by B0·B1; here the last blocks are zero-padded (zeros never raise an absmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F

from .errors import ConfigError

__all__ = ["nf_levels", "quantize", "NFConfig", "normal_float_levels", "nf_quantize", "double_quantized_scales",
           "bits_per_parameter", "storage_bits", "NF_GRID", "NESTED_BITS", "round_ste",
           "nested_residuals", "gated_residual_sum", "nested_quantize"]

#: QLoRA's NF4 offset: the outermost quantile, chosen so both ends of the levels land on ±1 (bitsandbytes, LQ-LoRA)
NF_OFFSET = 0.9677083
#: b1, the storage of the second-level scales, in bits
SCALE_BITS = {"fp32": 32, "fp16": 16, "bf16": 16}
_SCALE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------- QWHA's group quantizer


def nf_levels(bits: int) -> torch.Tensor:
    """2^bits NormalFloat levels in [-1, 1]: normal quantiles at evenly spaced probabilities, absmax-normalised."""
    n = 2 ** bits
    probs = torch.linspace(0.5 / n, 1 - 0.5 / n, n).double()
    q = torch.from_numpy(scipy.stats.norm.ppf(probs.numpy()))
    return (q / q.abs().max()).float()


def quantize(w: torch.Tensor, bits: int, group_size: int, kind: str) -> torch.Tensor:
    """Dequantized W_Q: per row, groups of ``group_size`` inputs share a scale (and, for RTN, a zero point)."""
    out_f, in_f = w.shape
    g = min(group_size, in_f)
    pad = (-in_f) % g
    x = F.pad(w.float(), (0, pad)).view(out_f, -1, g)
    if kind == "rtn":
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        scale = ((hi - lo) / (2 ** bits - 1)).clamp_min(1e-12)
        q = torch.round((x - lo) / scale).clamp(0, 2 ** bits - 1) * scale + lo
    else:
        levels = nf_levels(bits).to(w.device)
        absmax = x.abs().amax(-1, keepdim=True).clamp_min(1e-12)
        idx = ((x / absmax)[..., None] - levels).abs().argmin(-1)
        q = levels[idx] * absmax
    return q.view(out_f, -1)[:, :in_f].to(w.dtype)


# ------------------------------------------------------------------------ QLoRA / LQ-LoRA NormalFloat with DQ


@dataclass(frozen=True)
class NFConfig:
    """One quantization configuration c = (b, b0, B0, B1, b1) of LQ-LoRA §3.1."""

    bits: int = 4        #: b, bits of each weight (an index into the 2^b NF levels)
    bits0: int = 8       #: b0, bits of each first-level (per-block) scale
    block0: int = 64     #: B0, weights sharing one first-level scale
    block1: int = 256    #: B1, first-level scales sharing one second-level scale
    dtype1: str = "fp32"  #: b1, storage of the second-level scales

    def __post_init__(self):
        for name, value, low, high in (("bits", self.bits, 1, 8), ("bits0", self.bits0, 1, 16),
                                       ("block0", self.block0, 1, 1 << 20), ("block1", self.block1, 1, 1 << 20)):
            if not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"NFConfig: {name}={value!r} is invalid; it must be an integer in [{low}, {high}]")
        if self.dtype1 not in SCALE_BITS:
            raise ConfigError(f"NFConfig: dtype1={self.dtype1!r} is invalid; choose one of {sorted(SCALE_BITS)}")

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        """Integers for a buffer: (b, b0, B0, B1, index of b1 in fp32/fp16/bf16)."""
        return self.bits, self.bits0, self.block0, self.block1, list(SCALE_BITS).index(self.dtype1)

    @classmethod
    def from_tuple(cls, t) -> NFConfig:
        b, b0, block0, block1, d = (int(v) for v in t)
        return cls(b, b0, block0, block1, list(SCALE_BITS)[d])


#: LQ-LoRA's search grid, b, b0 ∈ {2, 3, 4, 8}, B0 ∈ {16, 32, 64}, B1 ∈ {16, 64, 256} (b1 = fp32): 144 configs
NF_GRID = tuple(NFConfig(b, b0, block0, block1) for b in (2, 3, 4, 8) for b0 in (2, 3, 4, 8)
                for block0 in (16, 32, 64) for block1 in (16, 64, 256))


def normal_float_levels(bits: int) -> torch.Tensor:
    """QLoRA's 2^b NormalFloat levels (ascending, in [−1, 1], with an exact 0): the quantiles of N(0, σ²) at
    2^(b−1) evenly spaced probabilities on [1−o, ½) and 2^(b−1)+1 on [½, o], o = 0.9677083 and σ such that the
    o-quantile is 1 (bitsandbytes' NF4 for b = 4; LQ-LoRA's ``create_normal_float_scheme`` for any b)."""
    sigma = -1.0 / (math.sqrt(2) * float(scipy.special.erfinv(1 - 2 * NF_OFFSET)))
    half = 2 ** (bits - 1)
    left = torch.linspace(1 - NF_OFFSET, 0.5, half, dtype=torch.float64)[:-1]
    right = torch.linspace(0.5, NF_OFFSET, half + 1, dtype=torch.float64)
    probs = torch.cat([left, right])
    levels = torch.from_numpy(scipy.stats.norm.ppf(probs.numpy(), scale=sigma))
    levels[half - 1] = 0.0  # ppf(½) is 0 up to rounding: make the zero exact
    return levels.float()


def _blocks(w: torch.Tensor, size: int) -> torch.Tensor:
    """The flattened ``w`` as rows of ``size`` (the last zero-padded)."""
    flat = w.reshape(-1).float()
    return F.pad(flat, (0, (-flat.numel()) % size)).view(-1, size)


def double_quantized_scales(w: torch.Tensor, cfg: NFConfig) -> torch.Tensor:
    """The dequantized first-level scale of every B0-block of ``w`` (one per block, flattened order).

    s = absmax of each block; s − min(s) in blocks of B1 is fake-quantized to b0 unsigned bits against the
    B1-block's absmax, which is itself rounded to b1; the minimum is added back."""
    scales = _blocks(w, cfg.block0).abs().amax(1)
    offset = scales.min()
    shifted = _blocks(scales - offset, cfg.block1)
    top = shifted.amax(1, keepdim=True).to(_SCALE_DTYPES[cfg.dtype1]).float()
    levels = 2 ** cfg.bits0 - 1
    step = top / levels
    q = torch.where(top > 0, torch.round(shifted / step.clamp_min(1e-30)).clamp(0, levels) * step,
                    torch.zeros_like(shifted))
    return q.reshape(-1)[:scales.numel()] + offset


def nf_quantize(w: torch.Tensor, cfg: NFConfig) -> torch.Tensor:
    """Dequantized NF weight of ``w`` under ``cfg`` (same shape and dtype): each entry becomes the nearest NF level
    times its block's double-quantized scale (nearest by the midpoints between levels, as the official
    ``torch.bucketize`` lookup)."""
    levels = normal_float_levels(cfg.bits).to(w.device)
    blocks = _blocks(w, cfg.block0)
    scales = double_quantized_scales(w, cfg).to(w.device)[:, None]
    scaled = blocks / scales.clamp_min(1e-30)
    idx = torch.bucketize(scaled, (levels[1:] + levels[:-1]) / 2)
    q = levels[idx] * scales
    return q.reshape(-1)[:w.numel()].view(w.shape).to(w.dtype)


def bits_per_parameter(cfg: NFConfig) -> float:
    """LQ-LoRA's storage cost of ``cfg`` (Eq. (4)): b + b0/B0 + b1/(B0·B1) bits per weight, the scales included."""
    return cfg.bits + cfg.bits0 / cfg.block0 + SCALE_BITS[cfg.dtype1] / (cfg.block0 * cfg.block1)


def storage_bits(numel: int, cfg: NFConfig) -> int:
    """Exact bits to store ``numel`` weights under ``cfg``: the b-bit codes, one b0-bit scale per (padded) B0-block,
    one b1 second-level scale per B1-block of scales and the fp32 offset (tends to :func:`bits_per_parameter`)."""
    n0 = -(-numel // cfg.block0)
    n1 = -(-n0 // cfg.block1)
    return numel * cfg.bits + n0 * cfg.bits0 + n1 * SCALE_BITS[cfg.dtype1] + 32


# ---------------------------------------------------------------- Bayesian Bits: nested residual quantization

#: Bayesian Bits' bit widths (van Baalen et al., NeurIPS 2020, §2.1; Bayesian-LoRA's quantization levels): each level
#: doubles the previous one, so that the 2^b − 1 steps of level b split into 2^b + 1 steps of level 2b
NESTED_BITS = (2, 4, 8, 16, 32)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, the identity in the backward pass (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def _check_nested(bits) -> tuple[int, ...]:
    bits = tuple(int(b) for b in bits)
    if not bits or any(b < 1 for b in bits) or any(b2 != 2 * b1 for b1, b2 in zip(bits, bits[1:])):
        raise ConfigError(f"nested quantization: bits={bits!r} is invalid; each level must double the previous one "
                          "(e.g. (2, 4, 8, 16, 32))")
    return bits


def nested_residuals(w: torch.Tensor, group_size: int, bits=NESTED_BITS,
                     straight_through: bool = False) -> list[torch.Tensor]:
    """The terms [x_{b₀}, ε_{b₁}, ε_{b₂}, …] of Bayesian Bits' recursive quantizer (van Baalen et al., 2020, §2.1;
    the Bayesian-LoRA code's ``recursive_quantization``), on the groups of :func:`quantize` (``group_size`` inputs of
    a row share a [min, max] range; ``group_size = 0``: one range for the whole tensor).

    x_{b₀} = lo + s_{b₀} round((w − lo)/s_{b₀}) with s_{b₀} = (hi − lo)/(2^{b₀} − 1); each residual is the error of
    the levels below it quantized on a grid 2^b + 1 times finer, s_{2b} = s_b/(2^b + 1), ε_{2b} = s_{2b} round((w −
    x_{≤b})/s_{2b}). Since (2^b − 1)(2^b + 1) = 2^{2b} − 1, the sum of the first k terms is the RTN quantization of
    ``w`` at ``bits[k−1]`` bits on the same range, ``quantize(w, bits[k−1], group_size, "rtn")`` (up to ties).
    The ranges (scales) carry no gradient; with ``straight_through`` the rounding passes the gradient through, so
    ∂x_{b₀}/∂w = 1 and the residuals' own gradients in w are zero (as in the official code)."""
    bits = _check_nested(bits)
    shape = w.shape
    if group_size == 0 or w.dim() < 2:
        x = w.float().reshape(1, 1, -1)
        pad = 0
    else:
        w2 = w.reshape(shape[0], -1)
        in_f = w2.shape[1]
        g = min(group_size, in_f)
        pad = (-in_f) % g
        x = F.pad(w2.float(), (0, pad)).view(w2.shape[0], -1, g)
    with torch.no_grad():
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        scale = ((hi - lo) / (2 ** bits[0] - 1)).clamp_min(1e-12)
    rnd = round_ste if straight_through else torch.round
    terms, total = [], None
    for k in range(len(bits)):
        if k == 0:
            term = rnd((x - lo) / scale) * scale + lo
        else:
            scale = scale / (2 ** bits[k - 1] + 1)
            term = rnd((x - total) / scale) * scale
        total = term if total is None else total + term
        terms.append(term)

    def back(t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1 or x.shape[1] != 1:  # grouped rows: drop the padding
            t = t.reshape(x.shape[0], -1)[:, :t.shape[1] * t.shape[2] - pad]
        return t.reshape(shape).to(w.dtype)

    return [back(t) for t in terms]


def gated_residual_sum(terms: list[torch.Tensor], gates) -> torch.Tensor:
    """x_q = x₂ + z₄(ε₄ + z₈(ε₈ + z₁₆(ε₁₆ + z₃₂ ε₃₂))) (Bayesian Bits Eq. (5); Bayesian-LoRA's quantization gates):
    ``gates`` holds one gate per residual (len(terms) − 1); a closed gate drops its level and every level above it."""
    if len(gates) != len(terms) - 1:
        raise ValueError(f"gated_residual_sum: {len(terms) - 1} residuals need as many gates, got {len(gates)}")
    acc = torch.zeros_like(terms[0])
    for term, gate in zip(reversed(terms[1:]), reversed(list(gates))):
        acc = gate * (term + acc)
    return terms[0] + acc


def nested_quantize(w: torch.Tensor, bits: int, group_size: int, levels=NESTED_BITS) -> torch.Tensor:
    """``w`` through the nested quantizer with every level up to ``bits`` on and the rest off: x_{≤bits}."""
    levels = _check_nested(levels)
    if bits not in levels:
        raise ConfigError(f"nested_quantize: bits={bits!r} is invalid; choose one of {levels}")
    terms = nested_residuals(w, group_size, levels[:levels.index(bits) + 1])
    return sum(terms[1:], terms[0])
