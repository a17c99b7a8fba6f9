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

Cost at real sizes (issue 24): every map is computed on ΔW's own device in O(mn log(mn)) and only the pooled map
leaves it. The DCT-II is one FFT per axis (Makhoul 1980: reorder, FFT, twiddle), the Walsh–Hadamard transform
fast through Sylvester's Kronecker structure H_n = H_a ⊗ H_b (:func:`fwht`, the order of ``scipy.linalg.hadamard``),
so no dense m×m transform matrix is ever built (``scipy.linalg.hadamard(16384)`` alone is 2 GiB). A layer with
``update_factors()`` of rank r ≤ min(m, n)/4 has its maps made from the transformed factors (:func:`factored_maps`).
Exact, not approximations: they equal ``scipy.fft.dctn(norm="ortho")`` and the dense Hadamard products to float
rounding (``tests/test_probe_scaling.py``).

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

import torch
import torch.nn.functional as F

from .base import Probe, ProbeContext, ProbeResult

MAX_SIDE = 128


def dct_ii(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Orthonormal DCT-II along ``dim`` (``scipy.fft.dct(norm="ortho")``), on ``x``'s device, through one FFT of
    the even-odd reordered signal (Makhoul 1980): X_k = Re(e^{−iπk/(2N)} FFT(v)_k) · 2 · √(1/(4N)) for k = 0 and
    · 2 · √(1/(2N)) otherwise, v = (x₀, x₂, …, x₃, x₁)."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    k = torch.arange(n, device=x.device, dtype=x.dtype)
    twiddle = torch.polar(torch.ones_like(k), -torch.pi * k / (2 * n))
    y = (torch.fft.fft(v) * twiddle).real * 2
    scale = torch.full_like(k, (1 / (2 * n)) ** 0.5)
    scale[0] = (1 / (4 * n)) ** 0.5
    return (y * scale).movedim(-1, dim)


def dct_map(delta: torch.Tensor) -> torch.Tensor:
    """|C_out ΔW C_inᵀ| with orthonormal DCT-II matrices, computed in float32 on ΔW's device."""
    d = delta.detach().float()
    return dct_ii(dct_ii(d, 0), 1).abs()


def fft_map(delta: torch.Tensor) -> torch.Tensor:
    """|FFT2(ΔW)| / √(mn), zero frequency at the centre (``fftshift``), on ΔW's device; see the module docstring
    for FourierFT."""
    return torch.fft.fftshift(torch.fft.fft2(delta.detach().float(), norm="ortho")).abs()


def fourierft_coefficient_scale(shape: tuple[int, int], scaling: float) -> float:
    """The factor 2√(mn)/α that turns an :func:`fft_map` value into |c| of a FourierFT coefficient (ΔW = α ·
    Re(IFFT2(F)), torch's default normalisation) for a ΔW of ``shape`` (m, n)."""
    m, n = shape
    return 2.0 * math.sqrt(m * n) / scaling


def _hadamard(n: int, device, dtype) -> torch.Tensor:
    """The Sylvester Hadamard matrix of order n (a power of two), by doubling: [[H, H], [H, −H]]."""
    h = torch.ones(1, 1, device=device, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def fwht(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Normalised fast Walsh–Hadamard transform along ``dim`` (its length n a power of two): x ↦ H_n x / √n with
    H_n the Sylvester matrix (``scipy.linalg.hadamard(n)``), without an n×n matrix. Sylvester's H_n = H_a ⊗ H_b
    (n = ab, both powers of two) turns the transform of a row reshaped to a×b into H_a X H_b: two products with
    √n-sized matrices, O(n√n) multiply-adds per row run by BLAS, which beats the n log₂ n butterfly's many passes
    over memory at every size a layer has (n ≤ 2¹⁶: a, b ≤ 256)."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht: length {n} is not a power of two")
    k = n.bit_length() - 1
    a, b = 1 << (k // 2), 1 << (k - k // 2)
    ha, hb = _hadamard(a, x.device, x.dtype), _hadamard(b, x.device, x.dtype)
    lead = x.shape[:-1]
    y = ha @ x.reshape(-1, a, b) @ hb  # (H_a ⊗ H_b) vec(X) = vec(H_a X H_bᵀ), H symmetric
    return (y.reshape(*lead, n) / math.sqrt(n)).movedim(-1, dim)


def wht_map(delta: torch.Tensor, sides: str = "both") -> torch.Tensor:
    """|H_out ΔW H_in| with normalised Sylvester-Hadamard matrices (zero-padded to powers of two); ``sides="input"``
    gives |ΔW H_in| only, for a layer whose update is transformed along its input alone (QWHA's ΔW = F H⁻¹: the rows
    stay output channels, so a two-sided map would smear its locations over every row). Fast transforms on ΔW's
    device (H is symmetric, so ΔW H_in is the transform of every row)."""
    d = delta.detach().float()
    m, n = (1 << max(0, math.ceil(math.log2(s))) for s in d.shape)
    if sides == "input":
        m = d.shape[0]
    d = F.pad(d, (0, n - d.shape[1], 0, m - d.shape[0]))
    d = fwht(d, 1)
    return (d if sides == "input" else fwht(d, 0)).abs()


def factored_maps(b: torch.Tensor, a: torch.Tensor, sides: str = "both") -> dict[str, torch.Tensor]:
    """The three maps of ΔW = B A from its factors, exactly: every transform here is linear on each side, so
    T_m ΔW T_nᵀ = (T_m B)(T_n Aᵀ)ᵀ, and only the r columns of B and Aᵀ are transformed (O((m log m + n log n) r))
    before one (m, r)·(r, n) product per map, instead of transforming m + n rows and columns of the dense ΔW."""
    b, a = b.detach().float(), a.detach().float()
    at = a.t()
    dct = (dct_ii(b, 0) @ dct_ii(at, 0).t()).abs()
    # the FFT map without a complex (m, n) product: fftshift moves rows of B's and Aᵀ's transforms (a roll of the
    # factors shifts the product), and |F| = hypot(Re, Im) with Re = [Br Bi][Ar −Ai]ᵀ, Im = [Br Bi][Ai Ar]ᵀ, two
    # real products with 2r inner terms (3x faster than complex64 matmul + abs + shift at 8192x2048)
    fb = torch.fft.fftshift(torch.fft.fft(b.to(torch.complex64), dim=0, norm="ortho"), dim=0)
    fa = torch.fft.fftshift(torch.fft.fft(at.to(torch.complex64), dim=0, norm="ortho"), dim=0)
    left = torch.cat([fb.real, fb.imag], 1)
    fft = torch.hypot(left @ torch.cat([fa.real, -fa.imag], 1).t(), left @ torch.cat([fa.imag, fa.real], 1).t())
    m, n = (1 << max(0, math.ceil(math.log2(s))) for s in (b.shape[0], at.shape[0]))
    ha = fwht(F.pad(at, (0, 0, 0, n - at.shape[0])), 0)
    hb = b if sides == "input" else fwht(F.pad(b, (0, 0, 0, m - b.shape[0])), 0)
    return {"dct": dct, "fft": fft, "wht": (hb @ ha.t()).abs()}


def pooled(x: torch.Tensor, side: int = MAX_SIDE) -> torch.Tensor:
    """``x`` max-pooled to at most ``side`` per axis, on the CPU (what is stored)."""
    if max(x.shape) > side:
        x = F.adaptive_max_pool2d(x[None, None], (min(side, x.shape[0]), min(side, x.shape[1])))[0, 0]
    return x.cpu()


def top_energy_fraction(coeffs: torch.Tensor, fraction: float = 0.01) -> float:
    e = coeffs.flatten().float() ** 2
    k = max(1, int(len(e) * fraction))
    if k >= len(e):
        top = e.sum(dtype=torch.float64)
    else:  # a selection, not a sort: the k-th largest t, then every entry above t and t for the ties
        pool = _top_candidates(e, k)
        t = torch.kthvalue(pool, len(pool) - k + 1).values
        above = e > t
        top = e[above].sum(dtype=torch.float64) + (k - int(above.sum())) * t.double()
    return float(top / e.sum(dtype=torch.float64).clamp_min(1e-30))


def _top_candidates(e: torch.Tensor, k: int, sample: int = 65_536) -> torch.Tensor:
    """A subset of ``e`` that surely holds its k largest entries, small enough for a fast ``kthvalue``: entries at
    or above a threshold read from an evenly strided sample at twice the wanted fraction, or all of ``e`` when that
    threshold keeps fewer than k (exact either way; kthvalue over 16M entries costs 0.7 s, over the subset ~0.05 s)."""
    if len(e) <= 4 * sample:
        return e
    probe = e[:: len(e) // sample]
    q = min(1.0, 2.0 * k / len(e))
    t = torch.quantile(probe, 1.0 - q) if q < 1.0 else probe.min()
    pool = e[e >= t]
    return pool if len(pool) >= k else e


class FrequencyProbe(Probe):
    name = "frequency"

    def after_step(self, ctx: ProbeContext) -> ProbeResult:
        out = ProbeResult()
        for module, layer in ctx.adaptation.named_layers():
            if not layer.has_weight:
                continue
            sides = getattr(layer, "frequency_sides", "both")
            with torch.no_grad():
                factors = layer.update_factors()
                if factors is not None and factors[0].shape[1] * 4 <= min(layer.out_features, layer.in_features):
                    maps = factored_maps(*factors, sides=sides)
                else:
                    delta = layer.update()  # the change from the original W0
                    maps = {"dct": dct_map(delta), "fft": fft_map(delta), "wht": wht_map(delta, sides)}
            dct = maps["dct"]
            out.add(module, "dct_top1pct_energy", top_energy_fraction(dct))
            for name in ("dct", "fft", "wht"):
                out.arrays[(module, name)] = pooled(maps[name])
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
