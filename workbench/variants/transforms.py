"""Structured transforms the variants share: products with a Kronecker product of small matrices, and the
orthonormal DCT-II by FFT.

A d×d transform with Kronecker structure K = K₁ ⊗ ⋯ ⊗ K_k (a Sylvester/Paley Hadamard matrix, QWHA; a rank-1
tensor-ring-matrix, TLoRA) acts on a row reshaped to an m₁×⋯×m_k grid one mode at a time: d·Σ mᵢ multiply-adds per
row instead of d², and no d×d matrix is built. For 384 = 12·32 that is 44 instead of 384 per entry of the input.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

__all__ = ["kron_matmul", "dct_rows", "idct_rows"]


def kron_matmul(x: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """x (K₁ ⊗ ⋯ ⊗ K_k)ᵀ for x (..., n) with n = ∏ (columns of Kᵢ): the last dimension of ``x`` read as a row-major
    grid (mode 1 slowest, as ``torch.kron`` orders it), mode i multiplied by Kᵢ; the result is (..., ∏ rows of Kᵢ).

    The same numbers as ``x @ torch.kron(K₁, …, K_k).t()`` up to float rounding (the sums run in another order),
    with autograd through the small matrix products only. Each pass is one transpose copy and one product of all
    rows with a small Kᵢᵀ (a single BLAS call), rather than a batch of tiny products per grid line."""
    lead = x.shape[:-1]
    y = x.reshape(-1, x.shape[-1])
    for f in factors:  # each pass moves the leading mode, multiplied by f, to the end: k passes restore the order
        y = (y.reshape(len(y), f.shape[1], -1).transpose(1, 2) @ f.t()).reshape(len(y), -1)
    return y.reshape(*lead, -1)


@functools.lru_cache(maxsize=32)
def _dct_plan(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Makhoul's reordering v = (x₀, x₂, x₄, …, x₅, x₃, x₁), its inverse, and the twiddles 2·s_k·e^{−iπk/(2n)} with
    the orthonormal scales s₀ = √(1/(4n)), s_k = √(1/(2n)): C x = Re(twiddle ⊙ FFT(v)) for the DCT-II matrix C."""
    k = torch.arange(n, device=device)
    perm = torch.cat([k[0::2], k[1::2].flip(0)])
    scale = torch.full((n,), math.sqrt(1 / (2 * n)), device=device, dtype=torch.float64)
    scale[0] = math.sqrt(1 / (4 * n))
    angle = -math.pi * k.double() / (2 * n)
    twiddle = torch.polar(2 * scale, angle).to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    return perm, torch.argsort(perm), twiddle


def dct_rows(x: torch.Tensor) -> torch.Tensor:
    """C x for the orthonormal DCT-II matrix C (``scipy.fft.dct(…, norm='ortho', axis=0)``), along dim 0 of a 2-D
    ``x``, by one FFT of the reordered rows (Makhoul, 1980): n log n per column instead of the n² of C @ x."""
    perm, _, twiddle = _dct_plan(len(x), x.device, x.dtype)
    return (torch.fft.fft(x.index_select(0, perm), dim=0) * twiddle[:, None]).real


def idct_rows(y: torch.Tensor) -> torch.Tensor:
    """Cᵀ y (= C⁻¹ y, C orthonormal) along dim 0: the adjoint of :func:`dct_rows`' real-linear map Re(diag(t) F P),
    i.e. Pᵀ Re(Fᴴ diag(t̄) y) with Fᴴ = n·IFFT."""
    _, inverse, twiddle = _dct_plan(len(y), y.device, y.dtype)
    return (len(y) * torch.fft.ifft(twiddle.conj()[:, None] * y, dim=0)).real.index_select(0, inverse)
