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

__all__ = ["compare", "Comparison", "parse_entry", "config_for_budget", "match_budget", "BudgetMatch", "BudgetWarning",
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


def _row(run: Run, label: str | None = None) -> dict[str, Any]:
    s = run.summary
    return {"variant": label or _label(run), "recipe": run.config.get("recipe"), "seed": run.config.get("seed"),
            "lr": run.config.get("lr"), "trainable_params": s.get("trainable_params"),
            "final_loss": s.get("final_loss"), "metric": s.get("metric"), "metric_value": s.get("metric_value"),
            "seconds_per_step": s.get("seconds_per_step"), "status": run.status, "run_id": run.id,
            "config": run.config.get("config")}


def _label(run: Run) -> str:
    """The comparison's name of a run: the variant, with ``+recipe`` when the run chose a recipe explicitly."""
    recipe = (run.config.get("settings") or {}).get("recipe")
    return f"{run.variant}+{recipe}" if recipe else run.variant


def parse_entry(entry: str) -> tuple[str, str | None]:
    """``"lora+altlora"`` → ``("lora", "altlora")``; ``"lora"`` → ``("lora", None)``. The recipe is everything after
    the first ``+`` (so ``"lora+altlora+"`` is LoRA trained by AltLoRA+). Unknown names are ConfigErrors."""
    from .recipes import get_recipe

    variant, plus, recipe = str(entry).partition("+")
    get_variant(variant)
    if plus and not recipe:
        raise ConfigError(f"compare: {entry!r} names no recipe after '+'; write variant+recipe, e.g. 'lora+altlora'")
    if recipe:
        get_recipe(recipe)
    return variant, recipe or None


def compare(task, variants: Sequence[str], *, budget: int | None = None, budget_on: str = "trainable",
            lr: float | str | dict[str, float] = "sweep", lrs: Iterable[float] | None = None,
            seeds: Iterable[int] = (0,), steps: int | None = None, configs: dict[str, dict] | None = None,
            executor: str = "local", store: RunStore | str | None = None,
            callback: Callable[[dict], None] | None = None, recipe_options: dict[str, dict] | None = None,
            **common) -> Comparison:
    """Train every variant in ``variants`` on ``task`` for each seed and tabulate the results.

    An entry is a variant name or a variant × recipe pair, ``"lora+altlora"`` (LoRA trained by the AltLoRA recipe,
    :mod:`workbench.recipes`); the table's ``variant`` column holds the entry as given and ``recipe`` the recipe
    used. ``recipe_options`` gives a recipe's options per entry (or per recipe name).
    ``lr="sweep"`` tries each of ``lrs`` on the first seed (by default :data:`SWEEP_FACTORS` times the rate the
    variant would get on this task: its preset's, else the task's default) and keeps the best by the task's
    validation metric; a float uses one rate for all; a dict gives one per entry. ``budget`` matches trainable
    parameters (``budget_on="saved"``: the numbers the saved adapter holds, :func:`~workbench.budget.saved_numbers`,
    which for LoLDU, SVFit or LoRA-XS are many more than they train). ``configs`` gives per-entry (or per-variant)
    hyper-parameters (on top of each variant's defaults and its preset for the task); ``steps=None`` is the task's
    default; ``common`` is passed to every ``train()`` call.
    """
    variants = list(variants)
    if not variants:
        raise ConfigError("compare: variants is empty; give at least one variant name")
    if len(set(variants)) < len(variants):
        raise ConfigError(f"compare: variants lists an entry twice: {variants}")
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("compare: seeds is empty; give at least one seed")
    if executor not in ("local", "ray"):
        raise ConfigError(f"compare: executor={executor!r} is invalid; executor must be one of 'local', 'ray'")
    if isinstance(task, str):
        task = task_registry.get(task)
    common.setdefault("progress", False)  # one bar per run would flood a notebook; pass progress=True to see them
    parsed = {v: parse_entry(v) for v in variants}  # unknown names fail before any training
    configs = dict(configs or {})
    options = dict(recipe_options or {})
    plan: dict[str, dict] = {}
    base_lr: dict[str, float] = {}
    extra: dict[str, dict] = {}
    for v in variants:
        name, recipe = parsed[v]
        cfg = dict(configs.get(v, configs.get(name, {})))
        resolved = resolve(task, get_variant(name), dict(common.get("settings") or {}), cfg,
                           use_presets=common.get("presets", True))
        base_lr[v] = resolved.settings.lr
        if budget is not None:  # sized with the preset's other values, which train() applies again
            match = match_budget(task, name, budget, targets=common.get("targets"), budget_on=budget_on,
                                 **resolved.config)
            if match.field is not None:
                cfg[match.field] = match.value
        plan[v] = cfg
        extra[v] = {}
        if recipe is not None:
            extra[v]["recipe"] = recipe
            if v in options or recipe in options:
                extra[v]["recipe_options"] = options.get(v, options.get(recipe))

    run_one = _ray_runner() if executor == "ray" else _local_runner

    def jobs(items):  # items: (entry, config, seed, rate); the runs come back in the same order
        return run_one(task, [(parsed[e][0], cfg, seed, rate, extra[e]) for e, cfg, seed, rate in items], steps,
                       store, callback, common)

    best_lr: dict[str, float] = {}
    sweep_runs: dict[str, list[Run]] = {}
    if lr == "sweep":
        rates = {v: list(lrs) if lrs is not None else [base_lr[v] * f for f in SWEEP_FACTORS] for v in variants}
        items = [(v, plan[v], seeds[0], r) for v in variants for r in rates[v]]
        finished = jobs(items)
        for (v, *_), run in zip(items, finished):
            sweep_runs.setdefault(v, []).append(run)
        for v in variants:
            best = None
            for run in sweep_runs[v]:
                score = run.summary.get("metric_value")
                if best is None or _better(task, score, best.summary.get("metric_value")):
                    best = run
            best_lr[v] = best.config["lr"]
    elif isinstance(lr, dict):
        best_lr = {v: float(lr[v] if v in lr else lr[parsed[v][0]]) for v in variants}
    else:
        best_lr = {v: float(lr) for v in variants}

    labelled: list[tuple[str, Run]] = []
    todo = []
    for v in variants:
        for seed in seeds:
            reuse = next((r for r in sweep_runs.get(v, []) if r.config["seed"] == seed and r.config["lr"]
                          == best_lr[v]), None)
            if reuse is not None:
                labelled.append((v, reuse))
            else:
                todo.append((v, plan[v], seed, best_lr[v]))
    labelled += [(item[0], run) for item, run in zip(todo, jobs(todo))]
    order = {v: i for i, v in enumerate(variants)}
    labelled.sort(key=lambda lr_: (order[lr_[0]], lr_[1].config["seed"]))
    sweep_table = (pd.DataFrame([_row(r, v) for v, rs in sweep_runs.items() for r in rs]) if sweep_runs else None)
    return Comparison(task=task.name, runs=[r for _, r in labelled],
                      table=pd.DataFrame([_row(r, v) for v, r in labelled]), best_lr=best_lr, sweep=sweep_table)


def _train_kwargs(steps, cfg, seed, rate, common, extra=None) -> dict[str, Any]:
    kw = {"lr": rate, "seed": seed, "config": cfg, **common, **(extra or {})}
    if steps is not None:
        kw["steps"] = steps
    return kw


def _local_runner(task, items, steps, store, callback, common) -> list[Run]:
    return [train(task, v, store=store, callback=callback, **_train_kwargs(steps, cfg, seed, rate, common, extra))
            for v, cfg, seed, rate, extra in items]


def _ray_runner():
    """Run each training as a Ray task (for clusters). Runs come back without their live adaptation and the
    callback sees no events from the workers; pass a ``store`` on a shared filesystem to keep the adapters."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("compare: executor='ray' needs the 'ray' package (pip install ray)") from exc

    @ray.remote
    def _train(task, v, cfg, seed, rate, steps, store, common, extra):
        run = train(task, v, store=store, **_train_kwargs(steps, cfg, seed, rate, common, extra))
        run.adaptation = None
        return run

    def runner(task, items, steps, store, callback, common):
        if not ray.is_initialized():
            ray.init()
        return ray.get([_train.remote(task, v, cfg, seed, rate, steps, store, common, extra)
                        for v, cfg, seed, rate, extra in items])

    return runner
