"""``compare()``: several variants on one task, fairly: matched parameter budgets, per-variant learning-rate sweeps
chosen on validation data, and seeds with mean and spread.

Budget matching (:func:`config_for_budget`) searches the variant's size field (``Variant.budget_field``, else the
first of ``r``, ``n``, ``rank`` in its config) for the value whose trainable-parameter count on the task's model is
closest to the budget. Everything trains through the one ``train()`` loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import tasks as task_registry
from .adapt import adapt
from .errors import ConfigError
from .runs import Run, RunStore
from .train import train
from .variant import get_variant

__all__ = ["compare", "Comparison", "config_for_budget", "DEFAULT_LRS"]

DEFAULT_LRS = (3e-3, 1e-2, 3e-2)
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
    cls = get_variant(variant)
    explicit = getattr(cls, "budget_field", None)
    names = [f["name"] for f in cls.Config.fields_info()]
    if explicit:
        return explicit
    return next((n for n in _SIZE_FIELDS if n in names), None)


def count_params(task, variant, targets=None, **config) -> int:
    """Trainable parameters of ``variant`` with ``config`` on ``task``'s model (built and thrown away)."""
    ad = adapt(task.model(), variant, targets or task.targets, **config)
    return ad.num_trainable()


def config_for_budget(task, variant, budget: int, targets=None, **config) -> dict[str, Any]:
    """The config (``config`` plus the size field) whose parameter count is closest to ``budget``.

    Counts grow monotonically with the size field for every registered variant, so a bisection over the
    field's allowed range finds the closest value in O(log range) model builds.
    """
    if budget < 1:
        raise ConfigError(f"compare: budget={budget} is invalid; budget must be an integer in [1, inf)")
    name = _size_field(variant)
    if name is None:
        return dict(config)
    info = next(f for f in get_variant(variant).Config.fields_info() if f["name"] == name)
    model = task.model()
    shapes = [(m.out_features, m.in_features) for n, m in model.named_modules()
              if hasattr(m, "out_features") and n]
    lo = int(info["low"](shapes[0]) if callable(info["low"]) else (info["low"] or 1))
    hi_b = info["high"]
    hi = int(min(hi_b(s) for s in shapes) if callable(hi_b) else (hi_b or 4096))

    def cost(v: int) -> int:
        return count_params(task, variant, targets, **{**config, name: v})

    while lo < hi:  # first value whose count reaches the budget
        mid = (lo + hi) // 2
        try:
            c = cost(mid)
        except ConfigError:
            hi = mid
            continue
        if c < budget:
            lo = mid + 1
        else:
            hi = mid
    candidates = [v for v in (lo - 1, lo) if v >= 1]
    best = min(candidates, key=lambda v: abs(_safe_cost(cost, v) - budget))
    return {**config, name: best}


def _safe_cost(cost: Callable[[int], int], v: int) -> float:
    try:
        return cost(v)
    except ConfigError:
        return math.inf


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
