"""``compare()``: several variants on one task, fairly: matched parameter budgets, per-variant learning-rate sweeps
chosen on validation data, and seeds with mean and spread.

Budget matching lives in :mod:`workbench.budget` (re-exported here). Everything trains through the one ``train()``
loop, so each variant gets the task's training defaults and its own preset for the task unless the caller says
otherwise.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
           "DEFAULT_LRS", "SelectionWarning"]

#: a sweep's rates, as multiples of the rate the variant would train with on the task (its preset's, else the task's)
SWEEP_FACTORS = (0.3, 1.0, 3.0)
DEFAULT_LRS = (3e-3, 1e-2, 3e-2)  # the synthetic tasks' sweep (1e-2 × SWEEP_FACTORS, rounded), kept for callers
@dataclass
class Comparison:
    """The runs of a comparison and their tidy table (one row per run).

    ``table`` reports each run on ``split`` (``"test"`` when the task has one, else ``"val"``, said in the table's
    ``split`` column) while ``sweep`` holds the selection runs scored on ``val``, the split that chose the rates.
    """

    task: str
    runs: list[Run]
    table: pd.DataFrame
    best_lr: dict[str, float] = field(default_factory=dict)
    sweep: pd.DataFrame | None = None
    split: str = "val"

    def summary(self, confidence: float = 0.95, alpha: float = 0.05) -> pd.DataFrame:
        """Per variant over its completed seeds: n, mean, sample standard deviation (ddof=1), a ``confidence``
        t-interval and whether it is indistinguishable from the best (Welch's t-test at ``alpha``), from
        :func:`workbench.study.summarize`; plus the mean and sample std of the other columns. A variant none of
        whose runs completed keeps a row with n = 0 (it is not silently dropped)."""
        from .study import summarize

        return summarize(self.table, higher_is_better=bool(self.table.attrs.get("higher_is_better", False)),
                         confidence=confidence, alpha=alpha, expected=list(self.best_lr))


def _better(task, a: float | None, b: float | None) -> bool:
    if a is None or not math.isfinite(a):
        return False
    if b is None or not math.isfinite(b):
        return True
    return a > b if getattr(task, "higher_is_better", False) else a < b


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _row(run: Run, label: str | None = None, split: str = "val") -> dict[str, Any]:
    """One run as a table row. ``metric_value`` is the run's final metric on ``split`` and only for a completed
    run: a diverged run was reset to its last good state, which is not a trained result, so its metric is missing
    and the value of that restored state goes to ``last_good_value`` (on val, at ``last_good_step``)."""
    s = run.summary
    done = run.status == "completed"
    nan = float("nan")
    val = s.get("metric_value")
    reported = s.get(f"{split}_metric_value") if split != "val" else val
    return {"variant": label or _label(run), "recipe": run.config.get("recipe"), "seed": run.config.get("seed"),
            "data_seed": (run.config.get("task_options") or {}).get("seed"),
            "lr": run.config.get("lr"), "trainable_params": s.get("trainable_params"),
            "saved_numbers": s.get("saved_numbers"), "final_loss": s.get("final_loss") if done else nan,
            "metric": s.get("metric"), "metric_value": reported if done and _finite(reported) else nan,
            "split": split, "metric_kind": "final", "val_metric_value": val if done and _finite(val) else nan,
            "last_good_value": nan if done else (val if _finite(val) else nan),
            "last_good_step": nan if done else s.get("restored_step", nan),
            "seconds_per_step": s.get("seconds_per_step"), "peak_memory_mb": s.get("peak_memory_mb"),
            "status": run.status, "run_id": run.id, "config": run.config.get("config")}


def _table(rows: list[dict], task) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df.attrs["higher_is_better"] = bool(getattr(task, "higher_is_better", False))
    return df


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


class SelectionWarning(UserWarning):
    """A sweep had nothing to select: every rate of a variant diverged or failed."""


def compare(task, variants: Sequence[str], *, budget: int | None = None, budget_on: str = "trainable",
            lr: float | str | dict[str, float] = "sweep", lrs: Iterable[float] | None = None,
            seeds: Iterable[int] = (0,), steps: int | None = None, configs: dict[str, dict] | None = None,
            executor: str = "local", store: RunStore | str | None = None,
            callback: Callable[[dict], None] | None = None, recipe_options: dict[str, dict] | None = None,
            data_seed: int | None = None, report_split: str = "test", cache: dict | None = None,
            on_selected: Callable[[dict[str, float]], None] | None = None, address: str | None = None,
            runtime_env: dict | None = None, **common) -> Comparison:
    """Train every variant in ``variants`` on ``task`` for each seed and tabulate the results.

    An entry is a variant name or a variant × recipe pair, ``"lora+altlora"`` (LoRA trained by the AltLoRA recipe,
    :mod:`workbench.recipes`); the table's ``variant`` column holds the entry as given and ``recipe`` the recipe
    used. ``recipe_options`` gives a recipe's options per entry (or per recipe name).
    ``lr="sweep"`` tries each of ``lrs`` on the first seed (by default :data:`SWEEP_FACTORS` times the rate the
    variant would get on this task: its preset's, else the task's default) and keeps the best by the task's
    metric on ``val``; only completed runs can be chosen (a diverged rate never is; a variant with no completed
    rate gets a :class:`SelectionWarning` and no runs). A float uses one rate for all; a dict gives one per entry.
    ``budget`` matches trainable parameters (``budget_on="saved"``: the numbers the saved adapter holds,
    :func:`~workbench.budget.saved_numbers`, which for LoLDU, SVFit or LoRA-XS are many more than they train).
    ``configs`` gives per-entry (or per-variant) hyper-parameters (on top of each variant's defaults and its preset
    for the task); ``steps=None`` is the task's default; ``common`` is passed to every ``train()`` call.

    Selection apart from reporting (issue 19): the sweep reads ``val`` only; once every rate is chosen
    (``on_selected(best_lr)`` is called then) each reported run is scored on ``report_split`` (``"test"``; a task
    without a test split is reported on ``val``, and the table's ``split`` column says so). ``seeds`` vary the
    initialisation and the data order; ``data_seed`` rebuilds the task with that ``seed`` option (the synthetic
    truth and data, the digits' val/test division, ...). ``cache`` (a dict, shared between calls on the same task
    and settings) lets a later comparison reuse the runs of an earlier one instead of training them again.
    ``executor="ray"`` trains each run as a Ray task (``address=`` an existing cluster, ``runtime_env`` for its
    workers; see :func:`_ray_runner`).
    """
    from .tasks.base import has_test_split

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
    if report_split not in ("val", "test"):
        raise ConfigError(f"compare: report_split={report_split!r} is invalid; report_split must be one of "
                          f"'val', 'test'")
    if isinstance(task, str):
        task = task_registry.get(task, **({} if data_seed is None else {"seed": data_seed}))
    elif data_seed is not None and (task.options() if hasattr(task, "options") else {}).get("seed") != data_seed:
        task = task_registry.get(task.name, **{**task.options(), "seed": data_seed})
    split = report_split if report_split == "val" or has_test_split(task) else "val"
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

    if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__"):
        store = RunStore(store)
    runner = _ray_runner(address=address, runtime_env=runtime_env) if executor == "ray" else _LocalRunner()
    cache = {} if cache is None else cache

    def key(e, cfg, seed, rate):
        return (e, json.dumps(cfg, sort_keys=True, default=str), int(seed), float(rate), steps)

    def jobs(items):  # items: (entry, config, seed, rate); the runs come back in the same order, cached ones reused
        todo = {key(*it): it for it in items if key(*it) not in cache}
        if todo:
            args = [(parsed[e][0], cfg, seed, rate, extra[e]) for e, cfg, seed, rate in todo.values()]
            for k, run in zip(todo, runner.train(task, args, steps, store, callback, common)):
                cache[k] = run
        return [cache[key(*it)] for it in items]

    best_lr: dict[str, float] = {}
    sweep_runs: dict[str, list[Run]] = {}
    if lr == "sweep":
        rates = {v: list(lrs) if lrs is not None else [base_lr[v] * f for f in SWEEP_FACTORS] for v in variants}
        items = [(v, plan[v], seeds[0], r) for v in variants for r in rates[v]]
        for (v, *_), run in zip(items, jobs(items)):
            sweep_runs.setdefault(v, []).append(run)
        for v in variants:
            best = None
            for run in sweep_runs[v]:  # only a completed run is a candidate: a diverged one was reset, not trained
                if run.status != "completed":
                    continue
                if best is None or _better(task, run.summary.get("metric_value"), best.summary.get("metric_value")):
                    best = run
            if best is None:
                warnings.warn(f"compare: every rate swept for {v} ({', '.join(f'{r:g}' for r in rates[v])}) "
                              f"ended {', '.join(sorted({r.status for r in sweep_runs[v]}))}; {v} has no runs",
                              SelectionWarning, stacklevel=2)
                best_lr[v] = float("nan")
            else:
                best_lr[v] = best.config["lr"]
    elif isinstance(lr, dict):
        best_lr = {v: float(lr[v] if v in lr else lr[parsed[v][0]]) for v in variants}
    else:
        best_lr = {v: float(lr) for v in variants}
    if on_selected is not None:
        on_selected(dict(best_lr))

    # reporting: only now is the report split read
    items = [(v, plan[v], seed, best_lr[v]) for v in variants if math.isfinite(best_lr[v]) for seed in seeds]
    runs = jobs(items)
    if split != "val":
        runner.score(task, [r for r in runs if r.status == "completed"], split, store)
    labelled = [(it[0], r) for it, r in zip(items, runs)]
    sweep_table = (pd.DataFrame([_row(r, v) for v, rs in sweep_runs.items() for r in rs]) if sweep_runs else None)
    table = _table([_row(r, v, split) for v, r in labelled], task)
    if table.empty:
        table = _table([], task).reindex(columns=list(_row(Run(id="-", config={}), "-").keys()))
    return Comparison(task=task.name, runs=[r for _, r in labelled], table=table, best_lr=best_lr,
                      sweep=sweep_table, split=split)


def _train_kwargs(steps, cfg, seed, rate, common, extra=None) -> dict[str, Any]:
    kw = {"lr": rate, "seed": seed, "config": cfg, **common, **(extra or {})}
    if steps is not None:
        kw["steps"] = steps
    return kw


def _scored(task, adaptation, split: str) -> dict[str, float]:
    """``task.evaluate`` on ``split`` with the adapter in eval mode."""
    was_training = adaptation.training
    adaptation.eval()
    try:
        return task.evaluate(adaptation.model, split=split)
    finally:
        adaptation.train(was_training)


def _record_score(run: Run, result: dict[str, float], split: str) -> None:
    metric = run.summary.get("metric", "loss")
    run.summary[f"{split}_metric_value"] = result.get(metric)
    run.summary[f"{split}_loss"] = result.get("loss")


class _LocalRunner:
    """Trains in this process, one run after another."""

    def train(self, task, items, steps, store, callback, common) -> list[Run]:
        return [train(task, v, store=store, callback=callback, **_train_kwargs(steps, cfg, seed, rate, common, extra))
                for v, cfg, seed, rate, extra in items]

    def score(self, task, runs: list[Run], split: str, store) -> None:
        for run in runs:
            if f"{split}_metric_value" not in run.summary:
                _record_score(run, _scored(task, run.adaptation, split), split)
                if store is not None:
                    store.save(run)


def _pack(adaptation) -> dict[str, bytes]:
    """An adaptation as the bytes of its saved folder (safetensors + JSON), to travel from a Ray worker."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        adaptation.save(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


def _unpack(task, files: dict[str, bytes]):
    import tempfile

    from .adapt import load_adaptation

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return load_adaptation(task.model(), tmp)


def _forwarded_env() -> dict[str, str]:
    """The folders and switches a worker needs to find what this process finds: the weights cache, the Hugging
    Face caches and offline switches, the thread count."""
    from .tasks.base import cache_dir

    env = {"WORKBENCH_CACHE": str(cache_dir().resolve())}
    for name in ("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "OMP_NUM_THREADS", "WORKBENCH_DATA"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _ray_runner(address: str | None = None, runtime_env: dict | None = None):
    """Run each training as a Ray task, on a local Ray or the cluster at ``address`` (``"auto"``: the one this
    machine belongs to). The task goes into Ray's object store once (``ray.put``) and every job reads it from
    there; the workers get this process's cache folders through ``runtime_env["env_vars"]`` (merged with the
    given ``runtime_env``); runs come back without their live adaptation (its saved files travel with them, for
    scoring on ``test`` after selection) and the callback sees no events from the workers. Pass a ``store`` on a
    folder every node sees to keep the runs; :class:`~workbench.runs.RunStore` is safe for concurrent writers."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("compare: executor='ray' needs the 'ray' package (pip install ray); the project's "
                          "'scale' extra pins it: pip install -e '.[scale]'") from exc

    env = dict(runtime_env or {})
    env["env_vars"] = {**_forwarded_env(), **dict(env.get("env_vars") or {})}

    def _train_job(task, v, cfg, seed, rate, steps, store, common, extra):
        run = train(task, v, store=store, **_train_kwargs(steps, cfg, seed, rate, common, extra))
        run._files = _pack(run.adaptation) if run.status == "completed" else None
        run.adaptation = None
        return run

    def _score_job(task, files, split):
        return _scored(task, _unpack(task, files), split)

    train_remote, score_remote = ray.remote(_train_job), ray.remote(_score_job)

    class Runner:
        def __init__(self):
            self.refs: dict[int, Any] = {}  # id(task) -> its object-store reference, put once

        def _task(self, task):
            if not ray.is_initialized():
                ray.init(address=address, runtime_env=env)
            if id(task) not in self.refs:
                self.refs[id(task)] = (task, ray.put(task))
            return self.refs[id(task)][1]

        def train(self, task, items, steps, store, callback, common) -> list[Run]:
            ref = self._task(task)
            if store is not None:
                store = RunStore(Path(store.root).resolve())  # workers resolve relative folders elsewhere
            return ray.get([train_remote.remote(ref, v, cfg, seed, rate, steps, store, common, extra)
                            for v, cfg, seed, rate, extra in items])

        def score(self, task, runs: list[Run], split: str, store) -> None:
            todo = [r for r in runs if f"{split}_metric_value" not in r.summary]
            if not todo:
                return
            ref = self._task(task)
            for run, result in zip(todo, ray.get([score_remote.remote(ref, r._files, split) for r in todo])):
                _record_score(run, result, split)
                if store is not None:
                    store.save(run)

    return Runner()
