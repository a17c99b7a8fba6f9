"""The norms the computational limits of LoRA are stated in (Hu, Su, Kuo, Song, Liu, ICLR 2025, arXiv 2406.03136).

Gradients of LoRA on attention can be computed in almost-linear time in the sequence length L only while the
attention logits stay small: the efficient regime asks ‖X W̃_Q‖_max and ‖X W̃_K‖_max ≤ Γ = o(√log L) (Thm 3.1 for
adapting Q and V), and once they reach Γ = Θ(√(log L · κ)) no sub-quadratic algorithm exists under SETH (Thm 4.1),
for d = O(log L) (theorem numbers as the project's method notes, §14, read them). Their analysis builds on Alman &
Song (NeurIPS 2023, "Fast Attention Requires Bounded Entries"), whose attention matrix is A = exp(QKᵀ/d) with every
entry of Q and K in [−B, B] and the transition at B = Θ(√log L).

What this probe reads, for every adapted query/key/value projection, on the current batch (one forward in eval
mode, no gradient, inside :func:`~workbench.probes.base.isolated_rng`):

* ``max_logit_factor`` M = max|X W̃ᵀ + b| with W̃ = W0 + ΔW, **the bias included** (what the layer outputs: Q and K
  enter the softmax with their biases), over the **real tokens** only: when the batch is a dict with an
  ``attention_mask`` of the layer input's (batch, length) shape, padding positions are left out
  (``padding_excluded`` records 1 then, 0 otherwise). A layer called several times per forward counts every call.
* ``ratio_to_sqrt_log_L`` = M / √(ln L): the factor as the layer outputs it, against the threshold; L is each
  sequence's number of real tokens and the ratio the largest over the batch's sequences (``sequence_length`` is
  the longest L). Sequences with L < 2 are skipped.
* With d = d_head (``config.head_dim`` when the model's Hugging Face config sets it, else ``hidden_size //
  num_attention_heads``), the model computes exp(Q_h K_hᵀ/√d) per head. Written in a convention where the scale
  sits in the factors, that is

  - ``ratio_to_sqrt_log_L_scaled`` = d^{+1/4} M / √(ln L): Alman & Song's exp(Q'K'ᵀ/d), Q' = d^{1/4} Q (the
    convention the threshold above is stated in);
  - ``ratio_to_sqrt_log_L_folded`` = d^{−1/4} M / √(ln L): exp(Q'K'ᵀ) with the 1/√d split evenly into the
    factors, Q' = d^{−1/4} Q.

  (Before, a single "scaled" ratio divided by √d, which is neither: at d = 64 it read 22.6× below the first.)
* ``max_abs_input`` max|X|, ``base_spectral_norm`` ‖W0‖₂ (the original pretrained W0, ``pretrained_weight()``),
  ``delta_spectral_norm`` ‖ΔW‖₂ (ΔW = ``update()``, the change from that W0) and
  ``max_abs_delta_output`` max|X ΔWᵀ| (the hard regime's ‖α X B A / r‖_max), over the same real tokens.

Cost: ‖W0‖₂ is computed once per layer and cached (W0 is frozen; :class:`~workbench.probes.base.Cache`), exactly up
to ``spectra.EXACT_SIDE`` on the smaller side and above it as the top value of a randomized SVD (an approximation,
a lower bound that the power iterations tighten); ‖ΔW‖₂ comes through ``update_factors()`` where the layer has them
(exact), else from :func:`~workbench.probes.spectra.top_svd`.

Value projections are read too, though only Q and K enter the softmax; a fused ``qkv`` projection's maximum is over
all three. The constants are asymptotic: read the ratios qualitatively. Layers without a token axis (input of fewer
than 3 dimensions) are skipped.

Not confirmed against the paper's text (only its abstract and section titles were at hand): whether Hu et al. keep
Alman & Song's 1/d inside the exponential or absorb a temperature into the weights (hence both conventions above),
whether their bounds are stated per head or for the whole projection (this probe takes the maximum over heads, the
same number for an entrywise max-norm), and the theorem numbers of the final version (its §3–§5 are the partial,
the full adaptation and the norm-based phase transition).
"""

from __future__ import annotations

import math
import re

import torch

from .base import Probe, ProbeContext, ProbeResult, isolated_rng, probe_cache
from .spectra import EXACT_SIDE, top_svd, update_svd

ATTENTION = re.compile(r"(query|key|value|q_proj|k_proj|v_proj|qkv)$")


def head_dim(model) -> int | None:
    """d_head from a Hugging Face config found on the model (or its ``encoder``, ``base_model`` or ``model``):
    ``config.head_dim`` when set, else ``hidden_size // num_attention_heads``; None without such a config."""
    for owner in (model, getattr(model, "encoder", None), getattr(model, "base_model", None),
                  getattr(model, "model", None)):
        cfg = getattr(owner, "config", None)
        if cfg is None:
            continue
        explicit = getattr(cfg, "head_dim", None)
        if isinstance(explicit, int) and explicit > 0:
            return explicit
        heads, hidden = getattr(cfg, "num_attention_heads", None), getattr(cfg, "hidden_size", None)
        if heads and hidden:
            return hidden // heads
    return None


def _token_mask(batch, x: torch.Tensor) -> torch.Tensor | None:
    """The batch's ``attention_mask`` as a bool (batch, length) mask of real tokens, when it fits ``x``."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is None or tuple(mask.shape) != tuple(x.shape[:2]):
        return None
    return mask.to(x.device) != 0


def _per_sequence_max(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """max over features and real tokens of ``values`` (batch, length, features), per sequence."""
    m = values.abs().amax(dim=-1)
    if mask is not None:
        m = m.masked_fill(~mask, 0.0)
    return m.amax(dim=-1)


class LimitsProbe(Probe):
    name = "limits"
    default = False

    def after_step(self, ctx: ProbeContext) -> ProbeResult | None:
        layers = {n: l for n, l in ctx.adaptation.named_layers() if ATTENTION.search(n) and l.has_weight}
        if not layers or ctx.batch is None or ctx.task is None:
            return None
        inputs: dict[str, list[torch.Tensor]] = {}
        hooks = [layer.register_forward_hook(lambda m, a, o, n=name: inputs.setdefault(n, []).append(a[0].detach()))
                 for name, layer in layers.items()]
        try:
            with torch.no_grad(), isolated_rng(ctx.adaptation.model, ctx.adaptation):
                ctx.task.loss(ctx.adaptation.model, ctx.batch)
        finally:
            for h in hooks:
                h.remove()
        out = ProbeResult()
        d_head = head_dim(ctx.adaptation.model)
        cache = probe_cache(self)
        for name, layer in layers.items():
            calls = [x for x in inputs.get(name, []) if x.dim() >= 3 and x.shape[-2] >= 2]
            if not calls:
                continue
            with torch.no_grad():
                w0 = layer.pretrained_weight().float()
                delta = layer.update().float()  # the change from the original W0
                w = w0 + delta
                bias = None if layer.base.bias is None else layer.base.bias.float()
                stats = [self._read(x.float().reshape(-1, *x.shape[-2:]), _token_mask(ctx.batch, x), w, bias, delta)
                         for x in calls]
                factor = torch.stack([s[0] for s in stats]).amax(dim=0)       # per sequence, over calls
                lengths = stats[0][1]
                keep = lengths >= 2
                if not bool(keep.any()):
                    continue
                gamma = lengths[keep].double().log().sqrt()
                ratio = float((factor[keep].double() / gamma).max())
                out.add(name, "max_logit_factor", float(factor[keep].max()))
                out.add(name, "ratio_to_sqrt_log_L", ratio)
                if d_head:
                    out.add(name, "ratio_to_sqrt_log_L_scaled", ratio * d_head ** 0.25)
                    out.add(name, "ratio_to_sqrt_log_L_folded", ratio * d_head ** -0.25)
                out.add(name, "sequence_length", int(lengths.max()))
                out.add(name, "padding_excluded", float(all(s[4] for s in stats)))
                out.add(name, "max_abs_input", max(s[2] for s in stats))
                out.add(name, "max_abs_delta_output", max(s[3] for s in stats))
                out.add(name, "base_spectral_norm", cache.get((name, "base_norm"), layer, layer.base.weight,
                                                              lambda w0=w0, name=name: _spectral_norm(w0, name)))
                out.add(name, "delta_spectral_norm", float(update_svd(layer, 1)[1][0])
                        if float(delta.abs().max()) > 0 else 0.0)
        return out

    @staticmethod
    def _read(x: torch.Tensor, mask: torch.Tensor | None, w: torch.Tensor, bias: torch.Tensor | None,
              delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float, bool]:
        """(per-sequence max|x W̃ᵀ + b|, per-sequence real length, max|x|, max|x ΔWᵀ|, whether padding was masked)
        for one call's input ``x`` (batch, length, features)."""
        if mask is not None and mask.shape != x.shape[:2]:
            mask = None
        factor = _per_sequence_max(torch.nn.functional.linear(x, w, bias), mask)
        lengths = (mask.sum(dim=-1) if mask is not None
                   else torch.full((x.shape[0],), x.shape[1], device=x.device))
        max_input = float(_per_sequence_max(x, mask).max())
        max_delta = float(_per_sequence_max(x @ delta.t(), mask).max())
        return factor, lengths, max_input, max_delta, mask is not None


def _spectral_norm(w: torch.Tensor, label: str) -> float:
    """‖w‖₂: exact up to ``EXACT_SIDE`` on the smaller side, else the top value of a randomized SVD."""
    if min(w.shape) <= EXACT_SIDE:
        return float(torch.linalg.matrix_norm(w, 2))
    return float(top_svd(w, 1, label=f"{label}:norm")[1][0])


# ----------------------------------------------------------------------------------- the mechanism, no training


def taylor_attention_error(gamma_factor: float, *, seq_len: int = 1024, dim: int | None = None, degree: int = 4,
                           seed: int = 0) -> float:
    """How well a fixed-degree polynomial approximates the attention matrix at an entry bound Γ = ``gamma_factor``
    · √(ln L): the mechanism behind the efficient regime of Hu et al. (Thm 3.1), taken from Alman & Song (2023).

    Draws X ∈ R^{L×d} and W_Q, W_K ∈ R^{d×d} (standard normal, from ``seed``), with d = ``dim`` or ⌈log₂ L⌉ (the
    theorems' d = O(log L)), scales Q = X W_Q and K = X W_K so that ‖Q‖_max = ‖K‖_max = Γ exactly, and compares
    A = exp(QKᵀ/d) (Alman & Song's convention, every logit then within ±Γ²) with the entrywise Taylor polynomial
    Â = Σ_{k ≤ degree} (QKᵀ/d)^k / k!, the low-rank factorisable surrogate (rank ≤ C(d + degree, degree)) whose
    accuracy the almost-linear algorithm needs. Returns ‖Â − A‖_max / ‖A‖_max. Below the threshold (Γ = o(√ln L))
    the logits stay small and a low degree suffices; above it the same degree misses the largest entries. This
    measures the approximation, not the SETH lower bound (Thm 4.1), which no experiment can test."""
    from ..errors import ConfigError

    if not (gamma_factor > 0 and math.isfinite(gamma_factor)):
        raise ConfigError(f"taylor_attention_error: gamma_factor={gamma_factor!r} is invalid; gamma_factor must be a "
                          f"finite number > 0")
    if seq_len < 2:
        raise ConfigError(f"taylor_attention_error: seq_len={seq_len!r} is invalid; seq_len must be an integer ≥ 2")
    if degree < 0:
        raise ConfigError(f"taylor_attention_error: degree={degree!r} is invalid; degree must be an integer ≥ 0")
    d = dim or math.ceil(math.log2(seq_len))
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(seq_len, d, generator=gen, dtype=torch.float64)
    q, k = (x @ torch.randn(d, d, generator=gen, dtype=torch.float64) for _ in range(2))
    gamma = gamma_factor * math.sqrt(math.log(seq_len))
    q, k = q * (gamma / q.abs().max()), k * (gamma / k.abs().max())
    logits = q @ k.t() / d
    exact = logits.exp()
    approx = sum(logits.pow(i) / math.factorial(i) for i in range(degree + 1))
    return float((approx - exact).abs().max() / exact.abs().max())
