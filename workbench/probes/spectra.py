"""Spectra of ΔW: singular values, effective and stable rank, subspace similarity to a reference, intruder
dimensions.

ΔW is the layer's :meth:`~workbench.variant.VariantLayer.update`, the change from the *original* pretrained W0, for
every variant: for PiSSA that is s·(B A − B0 A0), not s·B A (which is relative to its residual base and starts at
the top-r part of W0), for QWHA W_Q + F H⁻¹ − W0. (Before, both read their adapter relative to their re-based base:
PiSSA's ‖ΔW‖/‖W0‖ read 0.49 at step 0.)

* Singular values come through ``update_factors()`` when the layer has them: with B = Q_B R_B and Aᵀ = Q_A R_A,
  σ(B A) = σ(R_B R_Aᵀ), a k×k SVD in O((m+n)k²) instead of O(mn·min(m, n)).
* Effective rank: exp of the entropy of σ/Σσ (Roy & Vetterli, 2007). Stable rank: ‖ΔW‖_F² / ‖ΔW‖_2².
* Subspace similarity φ(A, B, i, j) = ‖U_A,iᵀ U_B,j‖_F² / min(i, j) (Hu et al., 2021, §7), against the task's
  true ΔW* where it is known, with k = min(8, numerical rank of ΔW*) for both i and j. ``subspace_similarity`` is the
  *left* (output-side, column-space) φ, the key's meaning since it was introduced; ``subspace_similarity_right`` is
  the same on the right singular vectors (the input side, row space: Hu et al. §7.2 compare the right singular
  subspaces of the A matrices), and ``subspace_similarity_min`` the smaller of the two. Only the minimum is high
  exactly when ΔW spans the true update's input *and* output subspaces: ΔW = U V₂ᵀ with a random V₂ against
  ΔW* = U Vᵀ has left φ = 1 but a low right φ (and a large ``rel_error``). ``figures.subspace_similarity`` plots
  the left key.
* Intruder dimensions (Shuttleworth et al., 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence"): top
  singular vectors of W0 + ΔW whose largest |cosine| with every singular vector of W0 is below a threshold, W0 the
  original pretrained weight (``pretrained_weight()``; ``singular_values_base`` is its spectrum).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Probe, ProbeContext, ProbeResult

SUBSPACE_DIM = 8


def singular_values(layer) -> torch.Tensor:
    """σ(ΔW) of a VariantLayer, ΔW its change from W0 (``update()``), exactly, cheaply through ``update_factors()``
    when it has them."""
    with torch.no_grad():
        f = layer.update_factors()
        if f is not None:
            b, a = (t.detach().float() for t in f)
            if b.shape[1] < min(b.shape[0], a.shape[1]):
                rb = torch.linalg.qr(b, mode="r").R
                ra = torch.linalg.qr(a.t(), mode="r").R
                return torch.linalg.svdvals(rb @ ra.t())
        return torch.linalg.svdvals(layer.update().detach().float())


def effective_rank(s: torch.Tensor) -> float:
    p = s[s > 0] / s.sum().clamp_min(1e-30)
    return float(torch.exp(-(p * p.log()).sum())) if len(p) else 0.0


def stable_rank(s: torch.Tensor) -> float:
    return float((s ** 2).sum() / (s[0] ** 2).clamp_min(1e-30)) if len(s) and s[0] > 0 else 0.0


def numerical_rank(s: torch.Tensor, rtol: float = 1e-4) -> int:
    return int((s > rtol * s.max()).sum()) if len(s) and s.max() > 0 else 0


def _phi(ua: torch.Tensor, ub: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(ua.t() @ ub) ** 2 / min(ua.shape[1], ub.shape[1]))


def subspace_similarities(a: torch.Tensor, b: torch.Tensor, i: int, j: int) -> tuple[float, float]:
    """(left φ, right φ) between the top-i singular vectors of ``a`` and the top-j of ``b``, each in [0, 1]; one SVD
    of each matrix."""
    sa = torch.linalg.svd(a.float(), full_matrices=False)
    sb = torch.linalg.svd(b.float(), full_matrices=False)
    return _phi(sa.U[:, :i], sb.U[:, :j]), _phi(sa.Vh[:i].t(), sb.Vh[:j].t())


def subspace_similarity(a: torch.Tensor, b: torch.Tensor, i: int, j: int, side: str = "left") -> float:
    """φ between the top-i left (``side="left"``, column space) or right (``"right"``, row space) singular vectors of
    ``a`` and the top-j of ``b``, in [0, 1]."""
    if side not in ("left", "right"):
        raise ConfigError(f"subspace_similarity: side={side!r} is invalid; side must be 'left' or 'right'")
    left, right = subspace_similarities(a, b, i, j)
    return left if side == "left" else right


def intruder_dimensions(w0: torch.Tensor, w: torch.Tensor, k: int = 10, threshold: float = 0.5,
                        u0: torch.Tensor | None = None) -> int:
    """How many of the top-k left singular vectors of ``w`` have max |cos| < threshold with all of ``w0``'s."""
    u0 = torch.linalg.svd(w0.float(), full_matrices=False).U if u0 is None else u0
    u = torch.linalg.svd(w.float(), full_matrices=False).U[:, :k]
    return int(((u0.t() @ u).abs().amax(dim=0) < threshold).sum())


class SpectraProbe(Probe):
    name = "spectra"

    def after_step(self, ctx: ProbeContext) -> ProbeResult:
        out = ProbeResult()
        for module, layer in ctx.adaptation.named_layers():
            if not layer.has_weight:
                continue
            s = singular_values(layer)
            out.arrays[(module, "singular_values")] = s
            out.add(module, "effective_rank", effective_rank(s))
            out.add(module, "stable_rank", stable_rank(s))
            out.add(module, "norm_fro", float(torch.linalg.vector_norm(s)))
            base_svd = ctx.state.get(module)
            with torch.no_grad():
                w0 = layer.pretrained_weight().detach().float()
                if base_svd is None:  # once per run: the original W0 is frozen
                    u0, s0, _ = torch.linalg.svd(w0, full_matrices=False)
                    base_svd = ctx.state[module] = u0
                    out.arrays[(module, "singular_values_base")] = s0
                delta = layer.update().detach().float()
                if float(delta.abs().max()) > 0:
                    out.add(module, "intruder_dimensions", intruder_dimensions(w0, w0 + delta, u0=base_svd))
                ref = (ctx.reference or {}).get(module)
                if ref is not None:
                    ref = ref.float()
                    ref_s = torch.linalg.svdvals(ref)
                    k = max(1, min(SUBSPACE_DIM, numerical_rank(ref_s)))
                    if float(delta.abs().max()) > 0 and float(ref.abs().max()) > 0:
                        left, right = subspace_similarities(delta, ref, k, k)
                        out.add(module, "subspace_similarity", left)
                        out.add(module, "subspace_similarity_right", right)
                        out.add(module, "subspace_similarity_min", min(left, right))
                    out.add(module, "rel_error", float(torch.linalg.matrix_norm(delta - ref)
                                                       / torch.linalg.matrix_norm(ref).clamp_min(1e-12)))
                    if (module, "reference") not in ctx.state:
                        ctx.state[(module, "reference")] = True
                        out.arrays[(module, "singular_values_reference")] = ref_s
        return out
