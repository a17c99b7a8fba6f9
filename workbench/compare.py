"""``compare()``: several variants on one task, fairly: matched parameter budgets, per-variant learning-rate sweeps
chosen on validation data, and seeds with mean and spread.

Budget matching (:func:`match_budget`, whose config :func:`config_for_budget` returns) searches the variant's size
field (``Variant.budget_field``, else the first of :data:`_SIZE_FIELDS` in its config) within the range it allows on
the adapted layers for the value whose trainable-parameter count on the task's model is closest to the budget, and
warns when that misses by more than one step of the field. Everything trains through the one ``train()`` loop.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import tasks as task_registry
from .adapt import adapt, match_targets
from .errors import ConfigError
from .runs import Run, RunStore
from .train import train
from .variant import get_variant

__all__ = ["compare", "Comparison", "config_for_budget", "match_budget", "BudgetMatch", "BudgetWarning",
           "DEFAULT_LRS"]

DEFAULT_LRS = (3e-3, 1e-2, 3e-2)
#: the size field of a variant that declares no ``budget_field``: the first of these in its config
_SIZE_FIELDS = ("r", "n", "rank", "n_coefficients")


@dataclass
class Comparison:
    """The runs of a comparison and their tidy table (one row per run)."""

    task: str
    runs: list[Run]
    table: pd.DataFrame
    best_lr: dict[str, float] = field(default_factory=dict)
    sweep: pd.DataFrame | None = None

    def summary(self) -> pd.DataFrame:
        """Mean and standard deviation over seeds, per variant."""
        t = self.table[self.table.status == "completed"]
        if t.empty:
            return pd.DataFrame()
        cols = ["trainable_params", "final_loss", "metric_value", "seconds_per_step"]
        g = t.groupby("variant", sort=False)[cols]
        out = g.mean().add_suffix("_mean").join(g.std(ddof=0).add_suffix("_std"))
        return out.reset_index()


def _size_field(variant) -> str | None:
    """The config field that sizes ``variant``'s adapter: ``Variant.budget_field`` when the class declares it,
    else the first of :data:`_SIZE_FIELDS` in its config, else ``None`` (nothing to size: full fine-tuning)."""
    cls = get_variant(variant)
    names = cls.Config.field_names()
    explicit = cls.budget_field
    if explicit is not None:
        if explicit not in names:
            raise ConfigError(f"{cls.name}: budget_field={explicit!r} is not a field of its config; "
                              f"fields: {', '.join(names) or '(none)'}")
        return explicit
    return next((n for n in _SIZE_FIELDS if n in names), None)


def count_params(task, variant, targets=None, **config) -> int:
    """Trainable parameters of ``variant`` with ``config`` on ``task``'s model (built and thrown away)."""
    ad = adapt(task.model(), variant, targets or task.targets, **config)
    return ad.num_trainable()


class BudgetWarning(UserWarning):
    """A parameter budget that matching could not come within one step of the size field of."""


@dataclass(frozen=True)
class BudgetMatch:
    """What budget matching chose for one variant: its size ``field`` set to ``value`` gives ``reached`` trainable
    parameters where ``budget`` were asked for. ``step`` is what one unit of the field adds near ``value`` (the
    larger of its two neighbours' differences), so ``missed`` means the budget lies outside the field's reach on
    these targets. ``field`` and ``value`` are ``None`` for a variant with nothing to size (full fine-tuning)."""

    variant: str
    budget: int
    field: str | None
    value: int | None
    reached: int
    step: int
    config: dict[str, Any]

    @property
    def missed(self) -> bool:
        return self.field is not None and abs(self.reached - self.budget) > self.step

    def message(self) -> str:
        """One sentence for a warning or a table cell."""
        if not self.missed:
            return f"{self.variant}: {self.field}={self.value} gives {self.reached:,} of {self.budget:,} parameters"
        short = self.reached < self.budget
        return (f"{self.variant}: budget={self.budget:,} {'not reached' if short else 'exceeded'} by more than one "
                f"step of {self.field} ({self.step:,} parameters): {self.field}={self.value} gives "
                f"{self.reached:,} trainable parameters and {self.field} can go no {'higher' if short else 'lower'} "
                f"on these target layers")


def _target_shapes(model, targets) -> list[tuple[int, int]]:
    """(out, in) of the layers ``adapt()`` would wrap: the one target matcher, so non-adapted layers (a
    classifier head, an embedding) never bound the size field."""
    if targets is None:
        targets = getattr(model, "default_targets", None)
        if targets is None:
            raise ConfigError("targets is required (glob patterns of nn.Linear module names, e.g. 'layers.*')")
    modules = [model.get_submodule(n) for n in match_targets(model, targets)]
    return [(m.out_features, m.in_features) for m in modules]


def _field_range(info: dict[str, Any], shapes: list[tuple[int, int]]) -> tuple[int, int | None]:
    """The integer range a size field may take on every target layer; ``None`` as the top when unbounded."""
    low, high = info["low"], info["high"]
    lo = max(low(s) for s in shapes) if callable(low) else (1 if low is None else low)
    lo = math.floor(lo) + 1 if info["low_open"] else math.ceil(lo)
    hi = min(high(s) for s in shapes) if callable(high) else high
    return max(int(lo), 0), (None if hi is None else math.floor(hi))


#: the top of a size field declared without one (VeRA's r): the search gallops up from the bottom, so the top costs
#: nothing unless a budget needs it, and it keeps a budget beyond reach from building gigabyte-sized bases
_UNBOUNDED = 2**16
_POLISH = 2  # values either side of the crossing pair that are also tried


def _first(pred: Callable[[int], bool], lo: int, hi: int) -> int:
    """The smallest v in [lo, hi] with ``pred(v)`` for a predicate that is false, then true (hi + 1 if never):
    doubling steps from ``lo``, then bisection, so the cost follows the answer rather than the range."""
    if pred(lo):
        return lo
    prev, step = lo, 1
    while True:
        v = min(lo + step, hi)
        if pred(v):
            break
        if v == hi:
            return hi + 1
        prev, step = v, step * 2
    lo, hi = prev + 1, v  # pred(prev) is false, pred(hi) is true
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _copy(model, task):
    """A fresh copy of the task's model to adapt (cheaper than building it again, e.g. loading MiniLM)."""
    try:
        return copy.deepcopy(model)
    except (TypeError, RuntimeError, copy.Error):  # a model that cannot be copied: build another
        return task.model()


def match_budget(task, variant, budget: int, targets=None, **config) -> BudgetMatch:
    """Set ``variant``'s size field (:func:`_size_field`) to the value whose trainable-parameter count on
    ``task``'s model is closest to ``budget``, within the range its declaration allows on the *adapted* layers.

    The count is monotone in the size field (growing for most variants, falling for RandLoRA, whose bases get
    fewer as r grows), and the values the config accepts form one interval around the given (or default) value:
    :func:`_first` finds that interval's bottom, then the first value that reaches the budget, in O(log value)
    model builds on copies of one model; the values next to that crossing are tried too. RandLoRA's count is
    monotone only at a coarse scale (ceil(d/r) bases of r + d parameters: it rises within each run of r with the
    same number of bases), so its match is the closest value near the crossing, not always the closest overall.

    Warns (:class:`BudgetWarning`) when the result misses the budget by more than one step of the field, e.g. when
    the targets cap a rank below what the budget would pay for.
    """
    if budget < 1:
        raise ConfigError(f"compare: budget={budget} is invalid; budget must be an integer in [1, inf)")
    cls = get_variant(variant)
    name = _size_field(variant)
    targets = targets or getattr(task, "targets", None)
    model = task.model()
    memo: dict[int | None, int | None] = {}

    def cost(v: int | None) -> int | None:
        """Trainable parameters with the field at ``v``; ``None`` where the config refuses ``v``."""
        if v not in memo:
            cfg = config if name is None else {**config, name: v}
            try:
                memo[v] = adapt(_copy(model, task), variant, targets, **cfg).num_trainable()
            except ConfigError:
                memo[v] = None
        return memo[v]

    if name is None:  # nothing to size: the config as it is
        return BudgetMatch(cls.name, budget, None, None, cost(None), 0, dict(config))
    info = next(f for f in cls.Config.fields_info() if f["name"] == name)
    lo, hi = _field_range(info, _target_shapes(model, targets))
    if hi is not None and hi < lo:
        raise ConfigError(f"{cls.name}: {name} has no allowed value on these target layers ([{lo}, {hi}])")
    top = _UNBOUNDED if hi is None else hi
    anchor = min(max(int(config.get(name, info["default"])), lo), top)
    start = next((v for v in (anchor, lo) if cost(v) is not None), None)
    if start is None:  # no value works with the rest of the config: let adapt() say why
        count_params(task, variant, targets, **{**config, name: anchor})
        raise ConfigError(f"{cls.name}: no {name} in [{lo}, {hi}] gives a valid config for budget matching")
    bottom = _first(lambda v: cost(v) is not None, lo, start)
    other = start if start > bottom else (bottom + 1 if bottom < top and cost(bottom + 1) is not None else bottom)
    growing = cost(other) >= cost(bottom)

    def reaches(v: int) -> bool:  # invalid above the interval counts as reached: the search stops below it
        c = cost(v)
        return c is None or (c >= budget if growing else c <= budget)

    first = _first(reaches, bottom, top)
    # the crossing pair (first - 1, first) holds the closest value of a monotone count; the few values around it
    # catch a count that is monotone only at a coarser scale (RandLoRA's ceil(d/r) bases of r + d parameters)
    around = range(max(bottom, first - 1 - _POLISH), min(top, first + _POLISH) + 1)
    value = min((v for v in around if cost(v) is not None), key=lambda v: (abs(cost(v) - budget), v))
    steps = [abs(cost(v) - cost(value)) for v in (value - 1, value + 1) if bottom <= v <= top and cost(v) is not None]
    match = BudgetMatch(cls.name, budget, name, value, cost(value), max(steps, default=0), {**config, name: value})
    if match.missed:
        warnings.warn(match.message(), BudgetWarning, stacklevel=2)
    return match


def config_for_budget(task, variant, budget: int, targets=None, **config) -> dict[str, Any]:
    """The config (``config`` plus the size field) whose parameter count is closest to ``budget``: the
    ``config`` of :func:`match_budget`, which says how close it came."""
    return match_budget(task, variant, budget, targets, **config).config


def _better(task, a: float | None, b: float | None) -> bool:
    if a is None or not math.isfinite(a):
        return False
    if b is None or not math.isfinite(b):
        return True
    return a > b if getattr(task, "higher_is_better", False) else a < b


def _row(run: Run) -> dict[str, Any]:
    s = run.summary
    return {"variant": run.variant, "seed": run.config.get("seed"), "lr": run.config.get("lr"),
            "trainable_params": s.get("trainable_params"), "final_loss": s.get("final_loss"),
            "metric": s.get("metric"), "metric_value": s.get("metric_value"),
            "seconds_per_step": s.get("seconds_per_step"), "status": run.status, "run_id": run.id,
            "config": run.config.get("config")}


def compare(task, variants: Sequence[str], *, budget: int | None = None,
            lr: float | str | dict[str, float] = "sweep", lrs: Iterable[float] = DEFAULT_LRS,
            seeds: Iterable[int] = (0,), steps: int = 200, configs: dict[str, dict] | None = None,
            executor: str = "local", store: RunStore | str | None = None,
            callback: Callable[[dict], None] | None = None, **common) -> Comparison:
    """Train every variant in ``variants`` on ``task`` for each seed and tabulate the results.

    ``lr="sweep"`` tries each of ``lrs`` on the first seed and keeps the best by the task's validation metric;
    a float uses one rate for all; a dict gives one per variant. ``budget`` matches trainable parameters.
    ``configs`` gives per-variant hyper-parameters; ``common`` is passed to every ``train()`` call.
    """
    variants = list(variants)
    if not variants:
        raise ConfigError("compare: variants is empty; give at least one variant name")
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("compare: seeds is empty; give at least one seed")
    if executor not in ("local", "ray"):
        raise ConfigError(f"compare: executor={executor!r} is invalid; executor must be one of 'local', 'ray'")
    if isinstance(task, str):
        task = task_registry.get(task)
    common.setdefault("progress", False)  # one bar per run would flood a notebook; pass progress=True to see them
    for v in variants:
        get_variant(v)  # unknown names fail before any training
    configs = dict(configs or {})
    plan: dict[str, dict] = {}
    for v in variants:
        cfg = dict(configs.get(v, get_variant(v).example_config))
        if budget is not None:
            cfg = config_for_budget(task, v, budget, targets=common.get("targets"), **cfg)
        plan[v] = cfg

    run_one = _ray_runner() if executor == "ray" else _local_runner
    jobs = lambda items: run_one(task, items, steps, store, callback, common)  # noqa: E731

    best_lr: dict[str, float] = {}
    sweep_runs: dict[str, list[Run]] = {}
    if lr == "sweep":
        rates = list(lrs)
        finished = jobs([(v, plan[v], seeds[0], r) for v in variants for r in rates])
        for v in variants:
            sweep_runs[v] = [run for run in finished if run.variant == get_variant(v).name]
            best = None
            for run in sweep_runs[v]:
                score = run.summary.get("metric_value")
                if best is None or _better(task, score, best.summary.get("metric_value")):
                    best = run
            best_lr[v] = best.config["lr"]
    elif isinstance(lr, dict):
        best_lr = {v: float(lr[v]) for v in variants}
    else:
        best_lr = {v: float(lr) for v in variants}

    runs: list[Run] = []
    todo = []
    for v in variants:
        for seed in seeds:
            reuse = next((r for r in sweep_runs.get(v, []) if r.config["seed"] == seed and r.config["lr"]
                          == best_lr[v]), None)
            if reuse is not None:
                runs.append(reuse)
            else:
                todo.append((v, plan[v], seed, best_lr[v]))
    runs += jobs(todo)
    order = {v: i for i, v in enumerate(get_variant(v).name for v in variants)}
    runs.sort(key=lambda r: (order[r.variant], r.config["seed"]))
    sweep_table = (pd.DataFrame([_row(r) for rs in sweep_runs.values() for r in rs]) if sweep_runs else None)
    return Comparison(task=task.name, runs=runs, table=pd.DataFrame([_row(r) for r in runs]), best_lr=best_lr,
                      sweep=sweep_table)


def _local_runner(task, items, steps, store, callback, common) -> list[Run]:
    return [train(task, v, steps=steps, lr=rate, seed=seed, store=store, callback=callback, **common, **cfg)
            for v, cfg, seed, rate in items]


def _ray_runner():
    """Run each training as a Ray task (for clusters). Runs come back without their live adaptation and the
    callback sees no events from the workers; pass a ``store`` on a shared filesystem to keep the adapters."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("compare: executor='ray' needs the 'ray' package (pip install ray)") from exc

    @ray.remote
    def _train(task, v, cfg, seed, rate, steps, store, common):
        run = train(task, v, steps=steps, lr=rate, seed=seed, store=store, **common, **cfg)
        run.adaptation = None
        return run

    def runner(task, items, steps, store, callback, common):
        if not ray.is_initialized():
            ray.init()
        return ray.get([_train.remote(task, v, cfg, seed, rate, steps, store, common)
                        for v, cfg, seed, rate in items])

    return runner
