"""Where the energy of ΔW lives: |2-D DCT-II| (orthonormal), |FFT2| (orthonormal, shifted) and Walsh–Hadamard maps.

The DCT is the basis LoCA and synthetic:dct use; FourierFT's coefficients live in the FFT; QWHA's in the
Walsh–Hadamard basis. All three maps are orthonormal transforms, so Σ map² = ‖ΔW‖_F² for each (Parseval) and the
three read on one scale; this is not the scale of every variant's own coefficients:

* FFT: the map is |FFT2(ΔW)| / √(mn) (``norm="ortho"``), shifted so the zero frequency is at the centre. FourierFT
  builds ΔW = α · Re(IFFT2(F)) with torch's default 1/(mn) inverse, so one real coefficient c at entry (j, k) shows
  as α|c| / (2√(mn)) at (j, k) *and* at its mirror (−j, −k) (the real part splits it in two): multiply a map value
  by 2√(mn)/α to read |c| (:func:`fourierft_coefficient_scale`). Its ``locations`` index the unshifted spectrum:
  entry (j, k) is drawn at ((j + m//2) mod m, (k + n//2) mod n) of this map.
* DCT: |C_m ΔW C_nᵀ|, the orthonormal DCT-II that LoCA and synthetic:dct build ΔW from, so their coefficients read
  as they are.
* WHT: |H_m ΔW H_n| with normalised Hadamard matrices (zero-padded to powers of two).

ΔW is each layer's ``update()``, the change from the original pretrained W0 (PiSSA: s·(B A − B0 A0), not s·B A;
QWHA: W_Q + F H⁻¹ − W0, its correction together with the quantisation error it leaves). A layer that re-bases its
frozen weight and has ``locations`` (QWHA) also gets the map of its own term relative to its base, in its
``frequency_basis``, as ``<basis>_adapter`` (``wht_adapter``): the map its locations index.

Maps larger than ``MAX_SIDE`` are max-pooled for storage (records say so, in ``map_pooled_from``; learned
``locations`` are in the unpooled coordinates). Variants with learned spectral ``locations``/``coefficients`` pass
them through for the overlay in ``figures.frequency_map``.
"""

from __future__ import annotations

import math

import scipy.fft
import scipy.linalg
import torch
import torch.nn.functional as F

from .base import Probe, ProbeContext, ProbeResult

MAX_SIDE = 128


def dct_map(delta: torch.Tensor) -> torch.Tensor:
    """|C_out ΔW C_inᵀ| with orthonormal DCT-II matrices."""
    return torch.from_numpy(abs(scipy.fft.dctn(delta.detach().double().cpu().numpy(), norm="ortho"))).float()


def fft_map(delta: torch.Tensor) -> torch.Tensor:
    """|FFT2(ΔW)| / √(mn), zero frequency at the centre (``fftshift``); see the module docstring for FourierFT."""
    return torch.fft.fftshift(torch.fft.fft2(delta.detach().float().cpu(), norm="ortho")).abs()


def fourierft_coefficient_scale(shape: tuple[int, int], scaling: float) -> float:
    """The factor 2√(mn)/α that turns an :func:`fft_map` value into |c| of a FourierFT coefficient (ΔW = α ·
    Re(IFFT2(F)), torch's default normalisation) for a ΔW of ``shape`` (m, n)."""
    m, n = shape
    return 2.0 * math.sqrt(m * n) / scaling


def wht_map(delta: torch.Tensor, sides: str = "both") -> torch.Tensor:
    """|H_out ΔW H_in| with normalised Sylvester-Hadamard matrices (zero-padded to powers of two); ``sides="input"``
    gives |ΔW H_in| only, for a layer whose update is transformed along its input alone (QWHA's ΔW = F H⁻¹: the rows
    stay output channels, so a two-sided map would smear its locations over every row)."""
    d = delta.detach().float().cpu()
    m, n = (1 << max(0, math.ceil(math.log2(s))) for s in d.shape)
    if sides == "input":
        m = d.shape[0]
    d = F.pad(d, (0, n - d.shape[1], 0, m - d.shape[0]))
    hm = (torch.eye(m) if sides == "input" else
          torch.from_numpy(scipy.linalg.hadamard(m)).float() / math.sqrt(m))
    hn = torch.from_numpy(scipy.linalg.hadamard(n)).float() / math.sqrt(n)
    return (hm @ d @ hn).abs()


def pooled(x: torch.Tensor, side: int = MAX_SIDE) -> torch.Tensor:
    if max(x.shape) <= side:
        return x
    return F.adaptive_max_pool2d(x[None, None], (min(side, x.shape[0]), min(side, x.shape[1])))[0, 0]


def top_energy_fraction(coeffs: torch.Tensor, fraction: float = 0.01) -> float:
    e = (coeffs.flatten() ** 2).sort(descending=True).values
    k = max(1, int(len(e) * fraction))
    return float(e[:k].sum() / e.sum().clamp_min(1e-30))


class FrequencyProbe(Probe):
    name = "frequency"

    def after_step(self, ctx: ProbeContext) -> ProbeResult:
        out = ProbeResult()
        for module, layer in ctx.adaptation.named_layers():
            if not layer.has_weight:
                continue
            with torch.no_grad():
                delta = layer.update()  # the change from the original W0
            dct = dct_map(delta)
            out.add(module, "dct_top1pct_energy", top_energy_fraction(dct))
            out.arrays[(module, "dct")] = pooled(dct)
            out.arrays[(module, "fft")] = pooled(fft_map(delta))
            sides = getattr(layer, "frequency_sides", "both")
            out.arrays[(module, "wht")] = pooled(wht_map(delta, sides))
            if sides == "input":
                out.add(module, "wht_input_side_only", 1.0)
            if max(dct.shape) > MAX_SIDE:
                out.add(module, "map_pooled_from", max(dct.shape))
            views = layer.inspect()
            for name in ("locations", "coefficients"):
                if name in views:
                    out.arrays[(module, name)] = views[name].detach().float().cpu()
            if "locations" in views and layer.pretrained_weight() is not layer.base.weight:
                # a re-based layer (QWHA): its locations index its own term, relative to its base, so that map too
                with torch.no_grad():
                    own = layer.delta_weight()
                basis = layer.frequency_basis
                own_map = wht_map(own, sides) if basis == "wht" else fft_map(own) if basis == "fft" else dct_map(own)
                out.arrays[(module, f"{basis}_adapter")] = pooled(own_map)
        return out
