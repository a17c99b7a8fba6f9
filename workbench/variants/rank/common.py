"""What the rank-allocation variants share: the orthogonality regularizer and the importance moving averages.

* Orthogonality (AdaLoRA, arXiv:2303.10512, Eq. (4); IncreLoRA's ``compute_svd_orth_regu``): R = γ · Σ_modules
  (‖A Aᵀ − I‖_F + ‖Bᵀ B − I‖_F) / N, which pushes the rows of A and the columns of B of an SVD-form update
  B diag(λ) A towards orthonormal sets, so λ carries the magnitudes and masking one triplet removes one direction.
  N is an explicit argument: ``per="matrix"`` divides by the number of matrices (two per module, as PEFT's AdaLoRA
  and IncreLoRA's official code do), ``per="module"`` by the number of modules (twice the penalty).
* Importance moving averages (AdaLoRA Eq. (8)–(10), reused by IncreLoRA Eq. (6)–(7)): from a sensitivity I,
  Ī ← β1 Ī + (1 − β1) I and Ū ← β2 Ū + (1 − β2) |I − Ī| with the *new* Ī, score Ī · Ū. I is a tensor per entry
  (AdaLoRA: |w ⊙ ∇w|) or a number per module (IncreLoRA); :class:`ImportanceEMA` keeps either by key.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Literal

import torch

__all__ = ["orthogonality_regularizer", "ImportanceEMA", "importance_ema"]


def _orthogonality_norms(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖A Aᵀ − I_r‖_F, ‖Bᵀ B − I_r‖_F) for a layer's ``lora_A`` [r, in] and ``lora_B`` [out, r]."""
    a, b = layer.lora_A, layer.lora_B
    a_cov, b_cov = a @ a.t(), b.t() @ b
    a_eye = torch.eye(a_cov.shape[0], device=a_cov.device, dtype=a_cov.dtype)
    b_eye = torch.eye(b_cov.shape[0], device=b_cov.device, dtype=b_cov.dtype)
    return torch.linalg.matrix_norm(a_cov - a_eye), torch.linalg.matrix_norm(b_cov - b_eye)


def orthogonality_regularizer(layers: Iterable, weight: float, *, per: Literal["matrix", "module"]) -> torch.Tensor:
    """γ · Σ_modules (‖A Aᵀ − I‖_F + ‖Bᵀ B − I‖_F) / N over ``layers`` (each with ``lora_A`` and ``lora_B``).

    ``per`` names N: ``"matrix"`` — the number of matrices, 2 per module (PEFT's AdaLoRA, IncreLoRA's official
    ``compute_svd_orth_regu``); ``"module"`` — the number of modules (half as many, so the penalty is doubled).
    Each normalisation keeps the float order its variant has always used (a running sum over matrices, then
    γ·sum/N; a mean over per-module sums, then γ·mean), so results stay bit-identical to the code before it was
    shared.
    """
    norms = [_orthogonality_norms(layer) for layer in layers]
    if per == "matrix":
        total = 0.0
        for a_norm, b_norm in norms:
            total = total + a_norm + b_norm
        return weight * total / (2 * len(norms))
    if per == "module":
        return weight * torch.stack([a_norm + b_norm for a_norm, b_norm in norms]).mean()
    raise ValueError(f"orthogonality_regularizer: per={per!r} is invalid; per must be 'matrix' or 'module'")


def importance_ema(ipt, unc, sensitivity, beta1: float, beta2: float):
    """One step of the smoothed sensitivity and its uncertainty; returns the new ``(Ī, Ū)``.

    Ī ← β1 Ī + (1 − β1) I;  Ū ← β2 Ū + (1 − β2) |I − Ī|, with the Ī just computed (AdaLoRA Eq. (8)–(9), as in
    PEFT's ``RankAllocator.update_ipt`` and IncreLoRA's code). Works on tensors and on plain numbers alike.
    """
    ipt = beta1 * ipt + (1 - beta1) * sensitivity
    unc = beta2 * unc + (1 - beta2) * abs(sensitivity - ipt)
    return ipt, unc


class ImportanceEMA:
    """Ī and Ū per key (a parameter's ``id``, a module's name ...), started at zero on a key's first update."""

    def __init__(self, beta1: float, beta2: float):
        self.beta1, self.beta2 = beta1, beta2
        self.ipt: dict[Hashable, torch.Tensor | float] = {}
        self.unc: dict[Hashable, torch.Tensor | float] = {}

    def update(self, key: Hashable, sensitivity: torch.Tensor | float) -> None:
        zero = torch.zeros_like(sensitivity) if isinstance(sensitivity, torch.Tensor) else 0.0
        self.ipt[key], self.unc[key] = importance_ema(self.ipt.get(key, zero), self.unc.get(key, zero), sensitivity,
                                                      self.beta1, self.beta2)

    def score(self, key: Hashable, default: torch.Tensor | float = 0.0) -> torch.Tensor | float:
        """Ī · Ū (AdaLoRA Eq. (10)); ``default`` for a key never updated."""
        if key not in self.ipt:
            return default
        return self.ipt[key] * self.unc[key]

    def __contains__(self, key: Hashable) -> bool:
        return key in self.ipt
