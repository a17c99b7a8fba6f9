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
* Cost at real sizes (issue 24). Every decomposition here stays O(mn·k) per probe call on a wide layer:

  - the top singular *vectors* of ΔW come through ``update_factors()`` too (:func:`update_svd`): ΔW = (Q_B U')
    S (Q_A V')ᵀ with R_B R_Aᵀ = U' S V'ᵀ, exact; a layer without factors (a dense ΔW) is decomposed exactly up to
    ``EXACT_SIDE`` and above it by a randomized top-k (``workbench.rng.svd_lowrank``, Halko et al. 2011, Alg. 4.4
    with q = k + ``OVERSAMPLE`` and ``NITER`` power iterations): an **approximation** there;
  - the reference ΔW*'s SVD and the frozen W0's are computed once and cached (:class:`~workbench.probes.base.Cache`,
    keyed by module and the tensor's identity, storage and version, so a changed tensor is never read stale);
  - intruder dimensions on a layer whose smaller side exceeds ``EXACT_SIDE`` are an **approximation**: W0's top
    ``BASE_DIM`` left singular vectors come from a randomized SVD once, W0 + ΔW's top-k from a Rayleigh–Ritz step on
    the span of those, the left factor of ΔW and the previous call's top-k, polished by ``NITER`` subspace
    iterations (one once warm-started from the previous call; Halko et al. Alg. 4.4), and a top vector counts as an
    intruder when its largest |cos| with those ``BASE_DIM`` vectors of W0 (not all of them) is below the threshold;
    ``singular_values_base`` then holds W0's top ``BASE_DIM`` values and ``intruder_approximate`` records 1.
    Checked against the exact count and exact top-10 spectrum on small layers (``tests/test_probe_scaling.py``).
"""

from __future__ import annotations

import torch

from .. import rng
from ..errors import ConfigError
from .base import Cache, Probe, ProbeContext, ProbeResult, probe_cache

SUBSPACE_DIM = 8
INTRUDER_K = 10          # top singular vectors of W0 + ΔW examined for intruders
EXACT_SIDE = 256         # layers whose smaller side is at most this get the exact decompositions (MiniLM's 384-wide
#                          layers are above it: 36 exact SVDs of W0 + ΔW cost ~1.9 s per call, ~20 training steps)
BASE_DIM = 2 * INTRUDER_K  # W0's top singular vectors kept for the approximate intruder count
OVERSAMPLE = 10
NITER = 2


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


def _private_stream(*labels):
    """A seeded stream of the probe's own for randomized decompositions: the run's generators are not advanced
    (probes never change the run) and the result does not depend on where in the run the probe was called."""
    return rng.seeded(rng.derive(0, "probe", *labels))


def top_svd(mat: torch.Tensor, k: int, exact_side: int | None = None,
            label: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U (m, k), S (k,), V (n, k)) of ``mat``: exact up to ``exact_side`` (default ``EXACT_SIDE``) on the smaller
    side, else a randomized top-k (an approximation, see the module docstring)."""
    mat = mat.detach().float()
    k = max(1, min(k, *mat.shape))
    limit = EXACT_SIDE if exact_side is None else exact_side
    if min(mat.shape) <= limit:
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        return u[:, :k], s[:k], vh[:k].t()
    with _private_stream("top_svd", label, *mat.shape):
        u, s, v = rng.svd_lowrank(mat, q=min(k + OVERSAMPLE, *mat.shape), niter=NITER + 2)
    return u[:, :k], s[:k], v[:, :k]


def update_svd(layer, k: int, exact_side: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k (U, S, V) of ΔW = ``update()``: exact and O((m+n)r²) through ``update_factors()`` (B = Q_B R_B,
    Aᵀ = Q_A R_A, R_B R_Aᵀ = U' S V'ᵀ, so ΔW = (Q_B U') S (Q_A V')ᵀ); a dense ΔW through :func:`top_svd`."""
    with torch.no_grad():
        f = layer.update_factors()
        if f is not None:
            b, a = (t.detach().float() for t in f)
            qb, rb = torch.linalg.qr(b)
            qa, ra = torch.linalg.qr(a.t())
            u, s, vh = torch.linalg.svd(rb @ ra.t())
            k = max(1, min(k, len(s)))
            return qb @ u[:, :k], s[:k], qa @ vh[:k].t()
        return top_svd(layer.update(), k, exact_side, label=getattr(layer, "name", ""))


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
    """How many of the top-k left singular vectors of ``w`` have max |cos| < threshold with all of ``w0``'s
    (exact: a full SVD of ``w``, O(mn·min(m, n)))."""
    u0 = torch.linalg.svd(w0.float(), full_matrices=False).U if u0 is None else u0
    u = torch.linalg.svd(w.float(), full_matrices=False).U[:, :k]
    return int(((u0.t() @ u).abs().amax(dim=0) < threshold).sum())


def count_intruders(u0: torch.Tensor, u: torch.Tensor, threshold: float = 0.5) -> int:
    """How many columns of ``u`` have max |cos| < ``threshold`` with every column of ``u0``."""
    return int(((u0.t() @ u).abs().amax(dim=0) < threshold).sum())


def base_decomposition(w0: torch.Tensor, exact_side: int | None = None,
                       label: str = "") -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(U0, σ0, approximate) of the frozen W0: every left singular vector (exact SVD) up to ``exact_side`` on the
    smaller side, else its top ``BASE_DIM`` from a randomized SVD (q = ``BASE_DIM + OVERSAMPLE``, ``NITER + 2``
    power iterations). Cache it: W0 never changes."""
    w0 = w0.detach().float()
    limit = EXACT_SIDE if exact_side is None else exact_side
    if min(w0.shape) <= limit:
        u0, s0, _ = torch.linalg.svd(w0, full_matrices=False)
        return u0, s0, False
    k = min(BASE_DIM, *w0.shape)
    with _private_stream("base", label, *w0.shape):
        u0, s0, _ = rng.svd_lowrank(w0, q=min(k + OVERSAMPLE, *w0.shape), niter=NITER + 2)
    return u0[:, :k], s0[:k], True


def top_left_vectors(w: torch.Tensor, k: int, start: list[torch.Tensor],
                     niter: int = NITER) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (U, σ) of ``w`` from a warm start: the span of the ``start`` blocks (columns in ``w``'s output space),
    ``niter`` subspace iterations Q ← orth(W Wᵀ Q), then Rayleigh–Ritz (SVD of Qᵀ W). Ritz values are lower bounds
    that converge quadratically in the subspace angle; exact when the top-k lies in the starting span."""
    q = torch.linalg.qr(torch.cat([s.float() for s in start], dim=1)).Q
    for _ in range(niter):
        q = torch.linalg.qr(w @ (w.t() @ q)).Q
    uz, s, _ = torch.linalg.svd(q.t() @ w, full_matrices=False)
    k = min(k, len(s))
    return q @ uz[:, :k], s[:k]


class SpectraProbe(Probe):
    name = "spectra"
    #: smaller side above which the decompositions of W0 + ΔW (and of a dense ΔW) are approximate
    exact_side: int = EXACT_SIDE

    def after_step(self, ctx: ProbeContext) -> ProbeResult:
        out = ProbeResult()
        cache = probe_cache(self)
        for module, layer in ctx.adaptation.named_layers():
            if not layer.has_weight:
                continue
            s = singular_values(layer)
            out.arrays[(module, "singular_values")] = s
            out.add(module, "effective_rank", effective_rank(s))
            out.add(module, "stable_rank", stable_rank(s))
            out.add(module, "norm_fro", float(torch.linalg.vector_norm(s)))
            with torch.no_grad():
                self._intruders(ctx, cache, module, layer, out)
                ref = (ctx.reference or {}).get(module)
                if ref is not None:
                    self._reference(ctx, cache, module, layer, ref, out)
        return out

    def _base(self, cache: Cache, module: str, layer) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """W0's decomposition, once per layer and state of its frozen weight (PiSSA's W0 is computed from frozen
        tensors, so its base weight's fingerprint stands for it)."""
        return cache.get((module, "base"), layer, layer.base.weight,
                         lambda: base_decomposition(layer.pretrained_weight(), self.exact_side, module))

    def _intruders(self, ctx: ProbeContext, cache: Cache, module: str, layer, out: ProbeResult) -> None:
        u0, s0, approximate = self._base(cache, module, layer)
        if (module, "base_recorded") not in ctx.state:
            ctx.state[(module, "base_recorded")] = True
            out.arrays[(module, "singular_values_base")] = s0
        delta = layer.update().detach().float()
        if not float(delta.abs().max()) > 0:
            return
        w0 = layer.pretrained_weight().detach().float()
        if not approximate:
            out.add(module, "intruder_dimensions", intruder_dimensions(w0, w0 + delta, k=INTRUDER_K, u0=u0))
            return
        w = w0 + delta
        k = min(INTRUDER_K, *w.shape)
        start = [u0[:, :k + OVERSAMPLE], update_svd(layer, k, self.exact_side)[0]]
        previous = ctx.state.get((module, "top_left"))
        warm = previous is not None and previous.shape[0] == w.shape[0]
        if warm:  # the last call's answer: the iterations of successive calls add up while ΔW moves slowly
            start.append(previous)
        u, _ = top_left_vectors(w, k, start, niter=1 if warm else NITER)
        ctx.state[(module, "top_left")] = u
        out.add(module, "intruder_dimensions", count_intruders(u0, u))
        out.add(module, "intruder_approximate", 1.0)

    def _reference(self, ctx: ProbeContext, cache: Cache, module: str, layer, ref: torch.Tensor,
                   out: ProbeResult) -> None:
        def decompose():
            r = ref.detach().float()
            s_all = torch.linalg.svdvals(r) if min(r.shape) <= self.exact_side else None
            u, s, v = top_svd(r, SUBSPACE_DIM, self.exact_side, label=f"{module}:reference")
            spectrum = s_all if s_all is not None else s
            k = max(1, min(SUBSPACE_DIM, numerical_rank(spectrum)))
            return u[:, :k], v[:, :k], spectrum, float(r.abs().max()) > 0, torch.linalg.matrix_norm(r)

        ref_u, ref_v, ref_s, nonzero, ref_norm = cache.get((module, "reference"), ref, ref, decompose)
        delta = layer.update().detach().float()
        ref = ref.float()
        if float(delta.abs().max()) > 0 and nonzero:
            k = ref_u.shape[1]
            u, _, v = update_svd(layer, k, self.exact_side)
            left, right = _phi(u[:, :k], ref_u), _phi(v[:, :k], ref_v)
            out.add(module, "subspace_similarity", left)
            out.add(module, "subspace_similarity_right", right)
            out.add(module, "subspace_similarity_min", min(left, right))
        out.add(module, "rel_error", float(torch.linalg.matrix_norm(delta - ref) / ref_norm.clamp_min(1e-12)))
        if (module, "reference") not in ctx.state:
            ctx.state[(module, "reference")] = True
            out.arrays[(module, "singular_values_reference")] = ref_s
