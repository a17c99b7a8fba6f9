"""The registered statistics of the claims ledger: ``fn(run, task, **options) -> float``, read from one finished run.

A claim names its statistic by key (``Claim.statistic``) so a declaration stays data. Each reads what the library
already measures (the run's summary and loss curve, :mod:`workbench.probes.spectra`,
:mod:`workbench.probes.landscape`) rather than computing it a second way. A run trained by the Ray executor comes
back without its live adaptation; :func:`adaptation_of` rebuilds it from the saved files that travel with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import scipy.stats
import torch

from ..errors import ConfigError

__all__ = ["register_statistic", "get_statistic", "statistic_names", "adaptation_of", "STATISTICS"]

STATISTICS: dict[str, tuple[Callable[..., float], str]] = {}


def register_statistic(name: str, help: str = ""):
    """Register ``fn(run, task, **options) -> float`` as ``name`` (a later registration of a name replaces it)."""
    def wrap(fn):
        STATISTICS[name] = (fn, help or (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return wrap


def get_statistic(name: str) -> Callable[..., float]:
    if name not in STATISTICS:
        raise ConfigError(f"claim: statistic={name!r} is invalid; statistic must be one of "
                          f"{', '.join(sorted(STATISTICS))}")
    return STATISTICS[name][0]


def statistic_names() -> list[str]:
    return sorted(STATISTICS)


def adaptation_of(run, task):
    """The run's trained adaptation: the live one, or (a Ray run) rebuilt from its packed files."""
    if getattr(run, "adaptation", None) is not None:
        return run.adaptation
    files = getattr(run, "_files", None)
    if files is None:
        raise ConfigError(f"claim: run {run.id} has no adaptation to measure (status {run.status})")
    from ..compare import _unpack

    run.adaptation = _unpack(task, files)
    return run.adaptation


def _nan_unless_completed(run) -> bool:
    return run.status != "completed"


@register_statistic("metric")
def metric(run, task) -> float:
    """The task's metric on the reported split (test where the task has one, else val)."""
    if _nan_unless_completed(run):
        return math.nan
    s = run.summary
    value = s.get("test_metric_value", s.get("metric_value"))
    return float(value) if value is not None else math.nan


@register_statistic("final_loss")
def final_loss(run, task) -> float:
    """The validation loss at the end of training."""
    v = run.summary.get("final_loss")
    return float(v) if v is not None and not _nan_unless_completed(run) else math.nan


@register_statistic("init_loss")
def init_loss(run, task) -> float:
    """The validation loss right after adapt() and the variant's prepare() (before any step)."""
    v = run.summary.get("init_loss")
    return float(v) if v is not None else math.nan


@register_statistic("train_loss_at")
def train_loss_at(run, task, step: int = 10, window: int = 5) -> float:
    """Mean training loss over the ``window`` logged steps ending at ``step`` (early convergence)."""
    curve = run.loss_curve()
    part = curve[curve.step <= step].tail(window)
    return float(part.value.mean()) if len(part) else math.nan


@register_statistic("trainable_params")
def trainable_params(run, task) -> float:
    """The number of trained parameters."""
    return float(run.summary.get("trainable_params", math.nan))


@register_statistic("metric_per_param")
def metric_per_param(run, task) -> float:
    """log10(metric) + log10(trainable parameters): lower is the same quality for fewer parameters."""
    m = metric(run, task)
    return math.log10(m) + math.log10(trainable_params(run, task)) if m > 0 else math.nan


@register_statistic("min_update_rank")
def min_update_rank(run, task, rtol: float = 1e-4) -> float:
    """The smallest numerical rank of ΔW = update() over the adapted modules (σ > rtol·σ_max)."""
    from ..probes.spectra import numerical_rank

    ad = adaptation_of(run, task)
    ranks = [numerical_rank(torch.linalg.svdvals(layer.update().detach().float()), rtol)
             for _, layer in ad.named_layers()]
    return float(min(ranks))


@register_statistic("allocation_spearman")
def allocation_spearman(run, task) -> float:
    """Spearman's ρ between each module's allocated rank (``inspect()["rank"]``) and the task's true rank."""
    truth = task.true_ranks()
    ad = adaptation_of(run, task)
    allocated = {n: float(layer.inspect()["rank"]) for n, layer in ad.named_layers()}
    names = [n for n in truth if n in allocated]
    rho = scipy.stats.spearmanr([truth[n] for n in names], [allocated[n] for n in names]).statistic
    return float(rho) if math.isfinite(rho) else 0.0


@register_statistic("zero_gate_fraction")
def zero_gate_fraction(run, task) -> float:
    """The share of gates that are exactly zero (SoRA's pruned ranks) over all modules."""
    ad = adaptation_of(run, task)
    gates = torch.cat([layer.inspect()["gates"].detach().flatten() for _, layer in ad.named_layers()])
    return float((gates == 0).float().mean())


@register_statistic("unneeded_rank")
def unneeded_rank(run, task) -> float:
    """Active ranks kept beyond the truth, summed over modules: Σ max(rank − true rank, 0) (fewer: pruned better)."""
    truth = task.true_ranks()
    ad = adaptation_of(run, task)
    return float(sum(max(float(layer.inspect()["rank"]) - truth[n], 0.0) for n, layer in ad.named_layers()))


@register_statistic("sharpness")
def sharpness(run, task, epsilon: float = 1e-3) -> float:
    """Keskar et al.'s ε-sharpness (%) of the trained adapter, :func:`workbench.probes.landscape.landscape`."""
    from ..probes.landscape import landscape

    if _nan_unless_completed(run):
        return math.nan
    ad = adaptation_of(run, task)
    return float(landscape(ad, task, dims=1, steps=3, span=0.1, seed=int(run.config.get("seed", 0)),
                           epsilon=epsilon)["sharpness"])


@register_statistic("intruders")
def intruders(run, task, k: int = 10, threshold: float = 0.5) -> float:
    """Intruder dimensions (Shuttleworth et al.): of W0 + ΔW's top-k left singular vectors, how many have
    max |cos| < threshold with every singular vector of W0, summed over modules."""
    from ..probes.spectra import intruder_dimensions

    ad = adaptation_of(run, task)
    total = 0
    for _, layer in ad.named_layers():
        w0 = layer.pretrained_weight().detach()
        total += intruder_dimensions(w0, w0 + layer.update().detach(), k=k, threshold=threshold)
    return float(total)


@register_statistic("gate_rank_total")
def gate_rank_total(run, task) -> float:
    """The total active rank over modules (``inspect()["rank"]``)."""
    ad = adaptation_of(run, task)
    return float(sum(float(layer.inspect()["rank"]) for _, layer in ad.named_layers()))


@register_statistic("mean_logged")
def mean_logged(run, task, key: str, probe: str | None = None) -> float:
    """The mean of a logged value (``run.metrics`` rows with this ``key``, of ``probe`` when given) over the run:
    the claim must list the probe that logs it in ``probes``."""
    m = run.metrics
    rows = m[(m.key == key) & ((m.probe == probe) if probe else True)]
    return float(rows.value.mean()) if len(rows) else math.nan


@register_statistic("quant_error_recovered")
def quant_error_recovered(run, task) -> float:
    """The share of the quantization error the adapter corrects, averaged over modules:
    1 − ‖W0 − Q − ΔW‖_F / ‖W0 − Q‖_F (the layer's ``inspect()["quant_error"]`` over the raw error, both relative
    to ‖W0‖_F); 0: no better than leaving the error alone."""
    ad = adaptation_of(run, task)
    shares = []
    with torch.no_grad():
        for _, layer in ad.named_layers():
            w0 = layer.pretrained_weight()
            raw = torch.linalg.matrix_norm(w0 - layer.base.weight) / torch.linalg.matrix_norm(w0)
            shares.append(1.0 - float(layer.inspect()["quant_error"]) / float(raw))
    return sum(shares) / len(shares)


@register_statistic("top_subspace_leak")
def top_subspace_leak(run, task, k: int = 8) -> float:
    """‖U_kᵀ ΔW‖_F / ‖ΔW‖_F averaged over modules, U_k the top-k left singular vectors of W0: how much of the
    update falls in the directions the pretrained layer relies on most (Comp-LoRA's forgetting mechanism)."""
    ad = adaptation_of(run, task)
    leaks = []
    with torch.no_grad():
        for _, layer in ad.named_layers():
            u_k = torch.linalg.svd(layer.pretrained_weight().float(), full_matrices=False).U[:, :k]
            delta = layer.update().float()
            leaks.append(float(torch.linalg.matrix_norm(u_k.t() @ delta) / torch.linalg.matrix_norm(delta)
                               .clamp_min(1e-30)))
    return sum(leaks) / len(leaks)


@register_statistic("magnitude_direction_correlation")
def magnitude_direction_correlation(run, task) -> float:
    """Pearson's r between ΔM and ΔD over the output units of every module (Liu et al.'s decomposition, Eq. 2-3):
    per unit j (a row of the (out, in) weight, the paper's column of W ∈ R^{d×k}), ΔM = |‖W_j‖ − ‖W0_j‖| and
    ΔD = 1 − cos(W_j, W0_j), W = W0 + ΔW. Liu et al. plot the column means per checkpoint and find LoRA's slope
    positive and DoRA's (like full fine-tuning's) negative; this reads the spread over units at the end."""
    ad = adaptation_of(run, task)
    dm, dd = [], []
    with torch.no_grad():
        for _, layer in ad.named_layers():
            w0 = layer.pretrained_weight().float()
            w = w0 + layer.update().float()
            n0, n = torch.linalg.vector_norm(w0, dim=1), torch.linalg.vector_norm(w, dim=1)  # per output unit
            dm.append((n - n0).abs())
            dd.append(1 - (w * w0).sum(1) / (n * n0).clamp_min(1e-30))
    r = scipy.stats.pearsonr(torch.cat(dm).numpy(), torch.cat(dd).numpy()).statistic
    return float(r)
