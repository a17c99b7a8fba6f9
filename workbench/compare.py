"""``compare()``: several variants on one task, fairly: matched parameter budgets, per-variant learning-rate sweeps
chosen on validation data, and seeds with mean and spread.

Budget matching lives in :mod:`workbench.budget` (re-exported here). Everything trains through the one ``train()``
loop, so each variant gets the task's training defaults and its own preset for the task unless the caller says
otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import tasks as task_registry
from .budget import BudgetMatch, BudgetWarning, config_for_budget, count_params, match_budget  # noqa: F401
from .errors import ConfigError
from .runs import Run, RunStore
from .settings import resolve
from .train import train
from .variant import get_variant

__all__ = ["compare", "Comparison", "config_for_budget", "match_budget", "BudgetMatch", "BudgetWarning",
           "DEFAULT_LRS"]

#: a sweep's rates, as multiples of the rate the variant would train with on the task (its preset's, else the task's)
SWEEP_FACTORS = (0.3, 1.0, 3.0)
DEFAULT_LRS = (3e-3, 1e-2, 3e-2)  # the synthetic tasks' sweep (1e-2 × SWEEP_FACTORS, rounded), kept for callers
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
            lr: float | str | dict[str, float] = "sweep", lrs: Iterable[float] | None = None,
            seeds: Iterable[int] = (0,), steps: int | None = None, configs: dict[str, dict] | None = None,
            executor: str = "local", store: RunStore | str | None = None,
            callback: Callable[[dict], None] | None = None, **common) -> Comparison:
    """Train every variant in ``variants`` on ``task`` for each seed and tabulate the results.

    ``lr="sweep"`` tries each of ``lrs`` on the first seed (by default :data:`SWEEP_FACTORS` times the rate the
    variant would get on this task: its preset's, else the task's default) and keeps the best by the task's
    validation metric; a float uses one rate for all; a dict gives one per variant. ``budget`` matches trainable
    parameters. ``configs`` gives per-variant hyper-parameters (on top of each variant's defaults and its preset for
    the task); ``steps=None`` is the task's default; ``common`` is passed to every ``train()`` call.
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
    base_lr: dict[str, float] = {}
    for v in variants:
        cfg = dict(configs.get(v, {}))
        resolved = resolve(task, get_variant(v), dict(common.get("settings") or {}), cfg,
                           use_presets=common.get("presets", True))
        base_lr[v] = resolved.settings.lr
        if budget is not None:  # sized with the preset's other values, which train() applies again
            match = match_budget(task, v, budget, targets=common.get("targets"), **resolved.config)
            if match.field is not None:
                cfg[match.field] = match.value
        plan[v] = cfg

    run_one = _ray_runner() if executor == "ray" else _local_runner
    jobs = lambda items: run_one(task, items, steps, store, callback, common)  # noqa: E731

    best_lr: dict[str, float] = {}
    sweep_runs: dict[str, list[Run]] = {}
    if lr == "sweep":
        rates = {v: list(lrs) if lrs is not None else [base_lr[v] * f for f in SWEEP_FACTORS] for v in variants}
        finished = jobs([(v, plan[v], seeds[0], r) for v in variants for r in rates[v]])
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


def _train_kwargs(steps, cfg, seed, rate, common) -> dict[str, Any]:
    kw = {"lr": rate, "seed": seed, "config": cfg, **common}
    if steps is not None:
        kw["steps"] = steps
    return kw


def _local_runner(task, items, steps, store, callback, common) -> list[Run]:
    return [train(task, v, store=store, callback=callback, **_train_kwargs(steps, cfg, seed, rate, common))
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
        run = train(task, v, store=store, **_train_kwargs(steps, cfg, seed, rate, common))
        run.adaptation = None
        return run

    def runner(task, items, steps, store, callback, common):
        if not ray.is_initialized():
            ray.init()
        return ray.get([_train.remote(task, v, cfg, seed, rate, steps, store, common)
                        for v, cfg, seed, rate in items])

    return runner
