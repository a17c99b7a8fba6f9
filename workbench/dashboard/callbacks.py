"""The dashboard's callbacks as plain functions: no Gradio in here, so tests call them directly.

Each returns values (strings, DataFrames, plotly figures from ``workbench.figures``); bad input raises
:class:`~workbench.errors.ConfigError`, which the app turns into a message in the page. The Train tab's forms are
generated from the declarations (``TrainSettings``, the variant's config, the task's options) and filled with what
``train()`` would use for the chosen (task, variant): task defaults and the variant's preset (:func:`train_forms`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import torch

from .. import figures, memory, tasks
from ..adapt import adapt
from ..compare import SWEEP_FACTORS, compare, parse_entry
from ..errors import ConfigError
from ..export import export_peft
from ..probes.landscape import MODES, landscape
from ..recipes import get_recipe, recipe_infos, recipe_names, validate_options
from ..runs import Run, RunStore, _inside
from ..settings import Preset, Resolved, TrainSettings, resolve
from ..train import train
from ..variant import get_variant, variant_infos
from . import jobs
from .forms import changed_options, options_table, parse_number, table_values
from .learn import presets_section, sizing_note

DEMO_TASK = "synthetic:lowrank"
DEMO_STEPS = 150
#: the training settings most runs change, at the top of the Train tab's settings form (the rest follow)
COMMON_SETTINGS = ("steps", "lr", "batch_size", "seed", "every", "eval_every")


# -- shared ---------------------------------------------------------------------------------------------------

TASK_CACHE_ENV = "WORKBENCH_TASK_CACHE"
_TASKS: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()  # (name, options) -> (task, bytes), oldest first
_TASKS_LOCK = threading.Lock()


def task_cache_limit() -> int:
    """Bytes the task cache may hold: ``$WORKBENCH_TASK_CACHE`` (same syntax as WORKBENCH_MEMORY_LIMIT) or the
    memory limit of one task (2 GiB): three moderate option sets must not keep gigabytes alive."""
    text = os.environ.get(TASK_CACHE_ENV, "").strip()
    if not text:
        return memory.memory_limit()
    previous = os.environ.get(memory.LIMIT_ENV)
    try:
        os.environ[memory.LIMIT_ENV] = text
        return memory.memory_limit()
    finally:
        if previous is None:
            os.environ.pop(memory.LIMIT_ENV, None)
        else:
            os.environ[memory.LIMIT_ENV] = previous


def get_task(name: str, options: tuple = ()):
    """Tasks are built once per process and options (the text task tokenizes its data set, digits pretrains a
    ViT); ``options`` is a sorted tuple of (key, value) pairs. The cache is bounded by the bytes its tasks hold
    (:func:`task_cache_limit`), least recently used first out; a task larger than the whole bound is not kept."""
    key = (name, options)
    with _TASKS_LOCK:
        if key in _TASKS:
            _TASKS.move_to_end(key)
            return _TASKS[key][0]
    task = tasks.get(name, **dict(options))
    size, limit = memory.object_bytes(task), task_cache_limit()
    with _TASKS_LOCK:
        if size <= limit:
            _TASKS[key] = (task, size)
            while sum(b for _, b in _TASKS.values()) > limit:
                _TASKS.popitem(last=False)
    return task


def task_cache_bytes() -> int:
    with _TASKS_LOCK:
        return sum(b for _, b in _TASKS.values())


def task_class(name: str):
    """The class of task ``name``, for what it declares (options, training defaults) without building it: building
    text:sst2 tokenizes its data set, digits pretrains a ViT. An unknown name is a ConfigError with suggestions."""
    return tasks.task_class(name)


def task_option_class(name: str):
    """The :class:`~workbench.options.Options` class declaring task ``name``'s options (None: it has none)."""
    return task_class(name).option_class


def task_options_form(name: str, current: Any = None):
    """The task-options form of ``name``, every declared option at its default; the values of ``current`` (the
    form shown before) are kept when the new task has the same options (one synthetic task to another)."""
    option_class = task_option_class(name)
    if option_class is None:
        return options_table(None)
    kept: dict[str, str] = {}
    if current is not None and len(current):
        texts = table_values(current)
        if list(texts) == option_class.field_names():
            kept = texts
    table = options_table(option_class)
    if kept:
        table["value"] = [kept[f] for f in table["field"]]
    return table


def task_from_form(name: str, form: Any = None) -> Any:
    """The task chosen in a tab, built with the options changed in its form (ranges are checked by ``tasks.get``)."""
    return get_task(name, task_key(name, form))


def task_key(name: str, form: Any = None) -> tuple:
    """The options changed in a tab's task form as a cache key for :func:`get_task`, checked (types, declared
    ranges, the memory estimate) without building the task: a request handler calls this and returns at once;
    the job builds the task (:func:`build_task`)."""
    if not name:
        raise ConfigError("choose a task")
    options = changed_options(task_option_class(name), form, {}, name)
    check_task_options(name, options)
    return tuple(sorted(options.items()))


def check_task_options(name: str, options: dict[str, Any]) -> None:
    """Check task ``name``'s ``options`` as far as the declaration allows without building anything: the declared
    types and ranges (the option class's own ``build`` where it derives defaults from other options, else
    ``validate``), then the bytes the task would hold (the task's ``estimate_bytes``, the estimate
    ``workbench.memory`` refuses above its limit). What only the built task can check (a text task's data folder,
    digits' stage) fails inside the job, naming the field."""
    cls = task_class(name)
    option_class = cls.option_class
    if option_class is None:
        return
    build = getattr(option_class, "build", None)
    if callable(build):
        built = build(name, name.partition(":")[2], dict(options))
    else:
        built = option_class.from_kwargs(dict(options), name)
        built.validate()
    estimate = getattr(cls, "estimate_bytes", None)
    if callable(estimate):
        memory.check_bytes(name, estimate(built), dict(options) or built.to_dict(), "its weights and data")


def building_phase(name: str, key: tuple = ()) -> str:
    """The status line while a job builds its task: what is going on and that it happens once per process."""
    with _TASKS_LOCK:
        cached = (name, key) in _TASKS
    if cached:
        return f"using the task **{name}** built earlier"
    return (f"building the task **{name}**: loading its model and preparing its data (tokenising a text data set, "
            f"pretraining or loading a digits ViT); once per process, later runs reuse it")


def build_task(job: jobs.Job, name: str, key: tuple = ()):
    """Build (or take from the cache) a task inside a job, saying so in the job's status line; Stop pressed
    meanwhile ends the job as soon as the build returns."""
    job.set_phase(building_phase(name, key))
    task = get_task(name, key)
    job.check_stop()
    return task


def task_of(run: Run):
    """The task a saved run was trained on, rebuilt with the options it recorded."""
    options = run.config.get("task_options") or {}
    try:
        return get_task(run.task, tuple(sorted(options.items())))
    except TypeError:  # an option that cannot be a cache key
        return tasks.get(run.task, **options)


def warm_up() -> None:
    """What the first Run would otherwise wait for, done once in the background as the app starts (the page does
    not wait for it): the demo task, and torch's optimizer machinery (the process's first ``torch.optim.AdamW``
    imports ``torch._dynamo``: 3.6 s on this machine, during which a first run showed nothing)."""
    get_task(DEMO_TASK)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])


def variant_names() -> list[str]:
    return [v.name for v in variant_infos()]


def task_names() -> list[str]:
    return tasks.names()


def store(root: str) -> RunStore:
    return RunStore(root)


# -- Learn ----------------------------------------------------------------------------------------------------

def learn_card(variant: str, task_name: str = DEMO_TASK) -> str:
    """What a variant is: paper, idea, formula, what it costs on the chosen task, a line when a paper default is
    sized for much larger layers than the task's (``learn.sizing_note``), and the variant's presets."""
    cls = get_variant(variant)
    task = get_task(task_name)
    ad = adapt(task.model(), cls, task.targets)
    n, layers = ad.num_trainable(), len(ad.module_names)
    base = sum(layer.base.weight.numel() for _, layer in ad.named_layers())
    shapes = {name: (layer.base.out_features, layer.base.in_features) for name, layer in ad.named_layers()}
    note = sizing_note(cls.Config.fields_info(), shapes)
    fields = "\n".join(f"| `{f['name']}` | `{f['default']!r}` | {f.get('help', '')} |"
                       for f in cls.Config.fields_info()) or "| — | — | no hyper-parameters |"
    flags = ", ".join(x for x, on in (("dynamic allocation", cls.dynamic), ("linear ΔW", cls.linear_delta()),
                                      ("non-linear update", not cls.linear_delta())) if on)
    reconstruction = getattr(cls, "reconstruction", "")
    warning = (f"⚠️ **Reconstructed from the paper's abstract** (no method section or official code was found): "
               f"{reconstruction}\n\n" if reconstruction else "")
    return (f"## {cls.name}\n*{cls.paper}* · family **{cls.family}** · {flags}\n\n{warning}{cls.summary}\n\n"
            f"{cls.formula}\n\n"
            f"On **{task_name}** with the paper's defaults: **{n:,}** trainable parameters in {layers} adapted layers "
            f"({100 * n / max(base, 1):.2f}% of those layers' {base:,} weights).\n\n"
            + (f"{note}\n\n" if note else "")
            + f"| field | default | meaning |\n| --- | --- | --- |\n{fields}"
            + presets_section(cls.presets, cls.preset_for(task_name)))


def start_demo(variant: str, owner: str | None = None) -> str:
    """A short training of ``variant`` on the synthetic low-rank task, in the background; returns the job id.
    ``owner`` (the browser session) may have one demo at a time (:func:`jobs.start`)."""
    cls = get_variant(variant)

    def work(job):
        task = build_task(job, DEMO_TASK)
        job.set_phase("adapting the model and evaluating it before the first step")
        return train(task, cls.name, settings={"steps": DEMO_STEPS, "lr": 1e-2, "seed": 0, "every": 5},
                     config=dict(cls.example_config), callback=job.on_event, control=job.control, progress=False)

    return jobs.start("demo", work, owner=owner).id


def demo_config_text(job_id: str | None) -> str:
    """The configuration the Learn tab's demo trained with (the variant's hyper-parameters and the loop's settings),
    shown under the demo so that what is watched can be repeated; empty before a demo."""
    job = jobs.get(job_id)
    run = job.run if job is not None else None
    if run is None:
        return ""
    config = ", ".join(f"{k}={v!r}" for k, v in (run.config.get("config") or {}).items())
    settings = ", ".join(f"{k}={run.config.get(k)!r}" for k in ("steps", "lr", "batch_size", "seed"))
    return f"Demo of **{run.variant}** on `{run.task}` · config: `{config or 'none'}` · training: `{settings}`"


# -- Train ----------------------------------------------------------------------------------------------------

def resolved_for(task_name: str, variant: str) -> Resolved:
    """What ``train()`` would use for (task, variant) with nothing given: the declared defaults, the task's training
    defaults and the variant's preset for the task, with the source of each value. Read from the task's class, so
    choosing a task in the form builds nothing."""
    if not task_name:
        raise ConfigError("choose a task")
    cls = get_variant(variant)
    return resolve(SimpleNamespace(name=task_name, defaults=dict(task_class(task_name).defaults)), cls)


def train_forms(task_name: str, variant: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The Train tab's settings form, the variant's config form (each with a ``from`` column: default, task or
    preset) and the line about the preset, for a (task, variant) choice."""
    cls = get_variant(variant)
    shown = resolved_for(task_name, cls.name)
    return (options_table(TrainSettings, shown.settings.to_dict(), shown.sources["settings"], COMMON_SETTINGS),
            options_table(cls.Config, shown.config, shown.sources["config"]),
            preset_note(cls.name, task_name, shown.preset))


def preset_note(variant: str, task_name: str, preset: Preset | None) -> str:
    """One line under the forms: which preset applies and why, or that none does."""
    if preset is None:
        return (f"No preset for **{variant}** on **{task_name}**: the paper's defaults and the task's training "
                f"defaults apply (the *from* column says which). An edited value is passed as explicit.")
    reason = (preset.reason or "no reason given").rstrip(". ")
    return (f"**Preset** for **{variant}** on `{preset.task}`: {reason}. Rows from *preset* come from it; an edited "
            f"value overrides it.")


def chosen_recipe(settings_table: Any, variant: str) -> str:
    """The recipe the Train tab's settings form names (its ``recipe`` row; blank or ``none``: the variant's own)."""
    text = table_values(settings_table).get("recipe", "") if settings_table is not None else ""
    named = TrainSettings.from_strings({"recipe": text}, "train")["recipe"] if str(text).strip() else None
    if named is not None:
        get_recipe(named)  # an unknown name is a ConfigError listing the recipes
    return named or get_variant(variant).default_recipe


def recipe_form(settings_table: Any, variant: str) -> tuple[pd.DataFrame, str]:
    """The options form of the recipe the settings name (generated from its Config, as every form is) and one line
    saying which recipe it is and what it needs."""
    name = chosen_recipe(settings_table, variant)
    info = next(r for r in recipe_infos() if r.name == name)
    need = " It needs low-rank factors (B, A): variants without `factors()` are refused." if info.needs_factors else ""
    line = (f"Recipe **{name}** (set the `recipe` row of the training settings to change it: "
            f"{', '.join(recipe_names())}). {info.summary}{need}")
    return options_table(info.config), line


def start_training(task_name: str, variant: str, settings_table: Any, config_table: Any, root: str,
                   task_options: Any = None, recipe_table: Any = None, owner: str | None = None) -> str:
    """Validate everything first (nothing starts on bad input), then train in the background.

    Only the values the user changed from what the forms were filled with (:func:`train_forms`,
    :func:`recipe_form`) are passed as explicit; every other value is left to ``train()``'s own resolution, so the
    run records its true source."""
    if not variant:
        raise ConfigError("choose a variant")
    if not task_name:
        raise ConfigError("choose a task")
    cls = get_variant(variant)
    shown = resolved_for(task_name, cls.name)
    settings = changed_options(TrainSettings, settings_table, shown.settings.to_dict(), "train")
    config = changed_options(cls.Config, config_table, shown.config, cls.name)
    key = task_key(task_name, task_options)  # checked, and its memory estimated; nothing built here
    final = resolve(SimpleNamespace(name=task_name, defaults=dict(task_class(task_name).defaults)), cls, settings,
                    config)  # the settings' ranges
    cls.Config.from_kwargs(final.config).validate()  # the ranges that do not depend on the layers
    recipe = get_recipe(final.settings.recipe or cls.default_recipe)
    recipe_options = changed_options(recipe.Config, recipe_table, recipe.Config().to_dict(), recipe.name)
    validate_options(recipe.name, recipe_options)
    run_store = store(root)

    def work(job):
        task = build_task(job, task_name, key)
        job.set_phase("checking the hyper-parameters against the task's layers")
        checked = resolve(task, cls, settings, config)
        cls.Config.from_kwargs(checked.config).validate({n: (m.out_features, m.in_features) for n, m in
                                                         _target_modules(task).items()})
        job.set_phase("adapting the model and evaluating it before the first step")
        try:
            return train(task, cls.name, settings=settings, config=config, store=run_store, callback=job.on_event,
                         control=job.control, progress=False, recipe_options=recipe_options)
        finally:
            _remember_pace(job, task_name)

    return jobs.start("train", work, owner=owner).id


def _target_modules(task) -> dict:
    from ..adapt import match_targets

    model = task.model()
    return {n: model.get_submodule(n) for n in match_targets(model, task.targets)}


def job_status(job_id: str | None) -> str:
    job = jobs.get(job_id)
    if job is None:
        return "No training yet: choose a task and a variant, then press **Run**."
    run = job.run
    if job.error:
        return f"**Failed:** `{job.error}`. The dashboard keeps serving; fix the input and run again."
    if run is None:
        place = jobs.queue_position(job)
        if place is not None:
            return (f"**queued** · {place} job(s) ahead or starting; at most {jobs.max_running()} train at once "
                    f"(WORKBENCH_MAX_JOBS). Stop cancels it.")
        if job.done:
            return f"**{job.status()}** before its first step{_stop_note(job)}."
        return f"**{job.status()}** · {job.phase or 'starting'} · {_elapsed(job)}"
    m = run.metrics
    losses = m[(m.probe == "train") & (m.key == "loss")]
    step = int(losses.step.max()) + 1 if len(losses) else 0
    steps = run.config.get("steps", "?")
    last = f"loss {losses.value.iloc[-1]:.4g}" if len(losses) else "waiting for the first check"
    status = job.status()
    text = f"**{status}** · run `{run.id}` · step {step}/{steps} · {last}"
    if not job.done:
        text += f" · {eta_text(job)}"
    else:
        text += _stop_note(job)
    preset = run.config.get("preset")
    if preset:
        text += f" · preset for `{preset['task']}`"
    if status == "diverged":
        text += (f" · ⚠️ the loss became NaN/inf or exploded at step {run.summary.get('diverged_at_step')}; the "
                 f"adapter was reset to step {run.summary.get('restored_step')}. Try a smaller learning rate.")
    if job.done and run.summary.get("metric_value") is not None:
        s = run.summary
        text += (f" · final {s['metric']} **{s['metric_value']:.4g}** · {s['trainable_params']:,} trainable "
                 f"parameters · {1000 * s['seconds_per_step']:.2f} ms/step")
    return text


def _elapsed(job: jobs.Job) -> str:
    return f"{time.time() - job.started:.0f} s so far"


def eta_text(job: jobs.Job) -> str:
    """``about 42 s left (12.3 ms/step)`` at the job's recent pace, or what it is waiting for."""
    if job.phase:
        return job.phase
    eta = job.eta_seconds()
    if eta is None:
        return "measuring the pace"
    (t0, s0), (t1, s1) = job.pace[0], job.pace[-1]
    return f"about {duration(eta)} left ({1000 * (t1 - t0) / (s1 - s0):.3g} ms/step)"


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _stop_note(job: jobs.Job) -> str:
    latency = job.stop_latency
    if latency is None:
        return ""
    return f" · stopped {latency * 1000:.0f} ms after Stop was pressed" if latency < 10 else \
        f" · stopped {latency:.0f} s after Stop was pressed"


def live_metric(job_id: str | None):
    """The task's metric on validation data at every evaluation of the job's run (the Train tab's metric plot)."""
    job = jobs.get(job_id)
    run = job.run if job is not None else None
    return figures.validation_metric([] if run is None else run)


def live_figures(job_id: str | None, module: str | None = None, smoothing: Any = 0.0, scale: str = "log") -> tuple:
    """Loss (smoothed and scaled as :func:`loss_chart`), gradient norms, spectrum and allocation of the job's run,
    as it trains."""
    job = jobs.get(job_id)
    run = job.run if job is not None else None
    if run is None:
        empty = figures.loss_curves([])
        return empty, empty, empty, empty
    return (loss_chart(run, smoothing, scale), figures.gradient_norms(run), figures.spectra(run, module=module),
            figures.allocation_heatmap(run))


def loss_chart(runs, smoothing: Any = 0.0, scale: str = "log"):
    """A loss chart as the page shows it: ``figures.loss_curves`` with its training lines smoothed by ``smoothing``
    (TensorBoard's debiased EMA, the raw lines kept faint; a seed band is the spread of the smoothed runs) and the
    loss axis on a ``log`` or ``linear`` scale (``figures.set_y_scale``). Validation points are never smoothed. Bad
    values are ConfigErrors naming the box."""
    weight = parse_number("smoothing", 0.0 if smoothing is None else smoothing, float, 0.0, 0.99)
    if scale not in ("log", "linear"):
        raise ConfigError(f"loss axis={scale!r} is invalid; choose 'log' or 'linear'")
    fig = figures.loss_curves(runs, smoothing=weight)
    figures.set_y_scale(fig, scale)
    return fig


def jobs_finished(job_ids) -> int:
    """How many of ``job_ids`` (None for a tab with no job yet) have ended: when it grows, runs have landed on disk
    and the run pickers refresh."""
    return sum(1 for j in job_ids if (job := jobs.get(j)) is not None and job.done)


def job_version(job_id: str | None) -> int:
    """Changes whenever the job's page should be redrawn: on every event, and every second while the job is in a
    phase with no events (building its task), so the elapsed time in its status line moves."""
    job = jobs.get(job_id)
    if job is None:
        return -1
    if job.phase and not job.done:
        return job.version * 10**7 + int(time.time()) % 10**7
    return job.version * 10**7


def stop_job(job_id: str | None, owner: str | None = None) -> str:
    """Stop the page's job and every other unfinished job of that kind the session (``owner``) started."""
    jobs.stop(job_id, owner)
    return job_status(job_id)


# -- Compare --------------------------------------------------------------------------------------------------

#: a Compare or Landscape job estimated to take longer than this asks for a confirmation before it starts
CONFIRM_SECONDS = 60.0
#: without a measured pace for the task (nothing trained on it yet), a comparison of more steps than this asks
CONFIRM_STEPS = 5_000
#: wall time of a training over the loop's own seconds_per_step (probes, evaluations, saving): the pace measured
#: by the jobs of this process replaces it as soon as one has run on the task
OVERHEAD = 1.5
_PACE: dict[str, float] = {}  # task name -> wall seconds per training step measured by this process's jobs


class NeedsConfirmation(ConfigError):
    """A job whose estimated cost is above :data:`CONFIRM_SECONDS` (or :data:`CONFIRM_STEPS`): the message says
    what it would cost; the page shows it with a button that starts the job anyway (``confirm=True``)."""


def measured_pace(root: str, task_name: str) -> tuple[float | None, str]:
    """Seconds per training step on ``task_name`` and where the number comes from: the wall pace this process's
    jobs measured, else the median ``seconds_per_step`` of the last completed runs of the task in the store (times
    :data:`OVERHEAD`), else None."""
    if task_name in _PACE:
        return _PACE[task_name], "measured by this dashboard"
    df = store(root).list()
    if df.empty:
        return None, "no run of this task yet"
    rows = df[(df.task == task_name) & (df.status == "completed")].head(10)
    paces = []
    for run_id in rows.id:
        try:
            meta = json.loads((store(root).safe_path(run_id) / "run.json").read_text())
            pace = float(meta["summary"]["seconds_per_step"])
        except (OSError, ValueError, KeyError, TypeError, ConfigError):
            continue
        if math.isfinite(pace) and pace > 0:
            paces.append(pace)
    if not paces:
        return None, "no run of this task yet"
    return OVERHEAD * sorted(paces)[len(paces) // 2], f"from {len(paces)} earlier run(s) of the task"


def _remember_pace(job: jobs.Job, task_name: str) -> None:
    if len(job.pace) >= 2:
        (t0, s0), (t1, s1) = job.pace[0], job.pace[-1]
        if s1 > s0:
            _PACE[task_name] = (t1 - t0) / (s1 - s0)


def comparison_plan(task_name: str, chosen: list[str], seeds: list[int], steps: int | None, sweep: bool,
                    root: str) -> dict[str, Any]:
    """What a comparison will train, from the settings alone: runs, training steps and (with a pace) seconds.

    A sweep trains each variant at ``len(SWEEP_FACTORS)`` rates on the first seed and reuses the best for that
    seed, so a variant takes ``len(SWEEP_FACTORS) + len(seeds) - 1`` runs; without a sweep ``len(seeds)``. A run's
    length is ``steps`` or what the variant would train for on the task (its preset's, else the task's)."""
    per_variant = len(SWEEP_FACTORS) + len(seeds) - 1 if sweep else len(seeds)
    lengths = {v: steps or resolved_for(task_name, v).settings.steps for v in chosen}
    total = sum(per_variant * n for n in lengths.values())
    pace, source = measured_pace(root, task_name)
    return {"runs": per_variant * len(chosen), "steps": total, "seconds": None if pace is None else total * pace,
            "pace": pace, "source": source}


def plan_text(plan: dict[str, Any]) -> str:
    text = f"{plan['runs']} runs, {plan['steps']:,} training steps in all"
    if plan["seconds"] is not None:
        text += f", about {duration(plan['seconds'])} ({1000 * plan['pace']:.3g} ms/step, {plan['source']})"
    else:
        text += f" (no pace known: {plan['source']})"
    return text


def _needs_confirmation(plan: dict[str, Any]) -> bool:
    if plan["seconds"] is not None:
        return plan["seconds"] > CONFIRM_SECONDS
    return plan["steps"] > CONFIRM_STEPS


def start_comparison(task_name: str, chosen: list[str] | None, seeds: Any, steps: Any, lr: Any, root: str,
                     task_options: Any = None, budget: Any = "", confirm: bool = False,
                     owner: str | None = None) -> str:
    """Compare the chosen variants in the background. ``steps`` blank leaves the run length to ``compare()`` (the
    task's default); ``lr`` is a number or ``sweep`` (each variant's best rate on validation data); ``budget``
    (blank: none) is a number of trainable parameters every variant is sized to (``compare(budget=...)``).

    The cost is estimated first (:func:`comparison_plan`); above :data:`CONFIRM_SECONDS` it raises
    :class:`NeedsConfirmation` with the estimate unless ``confirm``. The task is built in the job."""
    if not chosen:
        raise ConfigError("choose at least one variant to compare")
    for v in chosen:
        parse_entry(v)  # a variant, or variant+recipe ("lora+altlora")
    try:
        seed_list = [int(s) for s in str(seeds).replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"seeds={seeds!r} is invalid; seeds must be whole numbers separated by commas") from None
    if not seed_list or len(seed_list) > 10 or min(seed_list) < 0:
        raise ConfigError(f"seeds={seeds!r} is invalid; give 1 to 10 non-negative seeds, e.g. '0, 1, 2'")
    for seed in seed_list:  # the Train tab's bound on a seed, from the same declaration
        TrainSettings.from_kwargs({"seed": seed}).validate()
    given = {"steps": str(steps if steps is not None else "").strip()}
    rate = str(lr if lr is not None else "").strip()
    if rate.lower() != "sweep":
        given["lr"] = rate
    settings = setting_values({k: v for k, v in given.items() if v})
    budget_text = str(budget if budget is not None else "").strip()
    n_budget = parse_number("budget", budget_text, int, 1, 10**9) if budget_text else None
    key = task_key(task_name, task_options)  # checked, and its memory estimated; nothing built here
    run_store = store(root)
    length = {"steps": settings["steps"]} if "steps" in settings else {}  # none given: compare() picks
    plan = comparison_plan(task_name, list(chosen), seed_list, settings.get("steps"), "lr" not in settings, root)
    if not confirm and _needs_confirmation(plan):
        raise NeedsConfirmation(f"This comparison trains {plan_text(plan)}. Press **Start anyway** to run it, or "
                                f"choose fewer variants, seeds or steps (or a fixed learning rate instead of "
                                f"'sweep').")

    def work(job):
        job.planned_steps = plan["steps"]
        task = build_task(job, task_name, key)
        job.set_phase("sizing the variants to the budget" if n_budget is not None else
                      "starting the first run")
        try:
            return compare(task, list(chosen), seeds=seed_list, lr=settings.get("lr", "sweep"), store=run_store,
                           budget=n_budget, callback=job.on_event, progress=False, control=job.control, **length)
        finally:
            _remember_pace(job, task_name)
            record_comparison(root, job, task_name)

    job = jobs.start("compare", work, owner=owner)
    job.plan = {**plan, "seeds": seed_list}
    return job.id


def setting_values(texts: dict[str, str]) -> dict[str, Any]:
    """Training settings typed from text boxes and checked against their declared ranges (a ConfigError naming the
    field and its range), e.g. ``{"steps": "60"}`` → ``{"steps": 60}``."""
    values = TrainSettings.from_strings(texts)
    TrainSettings.from_kwargs(values).validate()
    return values


def comparison_view(job_id: str | None, module: str | None = None, smoothing: Any = 0.0,
                    scale: str = "log") -> tuple:
    """The Compare tab: results by variant (mean ± spread over seeds), one sortable row per run labelled
    ``lr=…, seed=…``, the learning-rate sweep's runs apart, overlaid losses of the compared runs (not the sweep's),
    and side-by-side spectra, allocation and frequency maps. Tables name the task's metric (``rel_error``,
    ``accuracy``), not ``metric_value``."""
    job = jobs.get(job_id)
    final, sweep = comparison_runs(job)
    shown = final or sweep
    metric = figures.metric_column(final + sweep)
    runs_df = comparison_rows(final, metric)
    return (comparison_summary(runs_df), runs_df, comparison_rows(sweep, metric), loss_chart(shown, smoothing, scale),
            figures.small_multiples(shown, "spectra", module=module),
            figures.small_multiples(shown, "allocation", module=module),
            figures.small_multiples(shown, "dct", module=module))


def comparison_runs(job: jobs.Job | None) -> tuple[list[Run], list[Run]]:
    """(the compared runs, the learning-rate sweep's other runs) of a Compare job. While it goes, every run so far
    counts as compared; once it ends, ``compare()``'s result says which runs are the seeds at the chosen rates."""
    if job is None:
        return [], []
    runs = list(job.runs)
    result = job.result
    if result is None or not hasattr(result, "runs"):
        return runs, []
    chosen = {r.id for r in result.runs}
    return [r for r in runs if r.id in chosen] or list(result.runs), [r for r in runs if r.id not in chosen]


def comparison_rows(runs: list[Run], metric: str | None = None) -> pd.DataFrame:
    """One row per run, grouped by variant, the metric under its own name: ``figures.results_frame`` (one
    definition for the dashboard and notebooks)."""
    return figures.results_frame(runs, metric)


def comparison_summary(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Per variant over its finished runs: how many, trainable parameters, and mean ± standard deviation (over
    seeds; the sample standard deviation, ddof=1, as ``Comparison.summary``) of the final loss and the task's
    metric."""
    metric = next((c for c in runs_df.columns if c.endswith("is better)") or c == "metric"), "metric")
    columns = ["variant", "runs", "trainable_params", "final_loss (mean ± sd)", f"{metric} (mean ± sd)",
               "ms_per_step"]
    done = runs_df[runs_df.status.isin(["completed", "stopped"])] if not runs_df.empty else runs_df
    rows = []
    for variant, g in (done.groupby("variant", sort=False) if not done.empty else []):
        rows.append({"variant": variant, "runs": len(g), "trainable_params": _same_or_range(g.trainable_params),
                     "final_loss (mean ± sd)": _mean_sd(g.final_loss), f"{metric} (mean ± sd)": _mean_sd(g[metric]),
                     "ms_per_step": float(f"{pd.to_numeric(g.ms_per_step, errors='coerce').mean():.4g}")})
    return pd.DataFrame(rows, columns=columns)


def _mean_sd(values) -> str:
    x = pd.to_numeric(values, errors="coerce").dropna()
    if x.empty:
        return ""
    if len(x) == 1:
        return f"{x.iloc[0]:.4g}"
    return f"{x.mean():.4g} ± {x.std(ddof=1):.2g}"


def _same_or_range(values) -> str:
    x = pd.to_numeric(values, errors="coerce").dropna().astype(int)
    if x.empty:
        return ""
    return f"{x.min():,}" if x.min() == x.max() else f"{x.min():,}–{x.max():,}"


def comparison_sweep(job_id: str | None):
    """The learning-rate sweep as a figure (``figures.lr_sweep``): every run trained on the sweep's seed (the other
    rates and the chosen one), the chosen rate of each variant ringed."""
    job = jobs.get(job_id)
    final, sweep = comparison_runs(job)
    first = getattr(job, "plan", {}).get("seeds", [None])[0] if job is not None else None
    swept = sweep + [r for r in final if r.config.get("seed") == first] if sweep else []
    chosen = getattr(job.result, "best_lr", None) if job is not None and job.result is not None else None
    return figures.lr_sweep(swept, chosen=chosen or None)


def comparison_pareto(job_id: str | None):
    """The finished comparison's Pareto view (``figures.pareto_params``): each variant's mean metric with its 95%
    interval, on the split ``compare()`` reports (test), against its trainable parameters, the frontier drawn; from
    ``Comparison.summary()``, so the dashboard shows the study's numbers, not a second computation."""
    job = jobs.get(job_id)
    result = job.result if job is not None else None
    if result is None or not hasattr(result, "summary"):
        return figures.pareto_params(pd.DataFrame())
    return figures.pareto_params(result.summary())


def comparison_csv(job_id: str | None) -> str | None:
    """The comparison's runs (compared and sweep, with a ``role`` column) as a CSV file in a fresh temporary
    folder, for the Export button; None while the job has no run."""
    job = jobs.get(job_id)
    final, sweep = comparison_runs(job)
    if not final and not sweep:
        return None
    metric = figures.metric_column(final + sweep)
    df = pd.concat([figures.results_frame(final, metric, role="compared"),
                    figures.results_frame(sweep, metric, role="sweep")], ignore_index=True)
    _forget_old_downloads()
    out = Path(tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX)) / f"{job.id}-results.csv"
    df.to_csv(out, index=False)
    return str(out)


def comparison_status(job_id: str | None) -> str:
    job = jobs.get(job_id)
    if job is None:
        return "Pick variants and press **Compare**."
    if job.error:
        return f"**Failed:** `{job.error}`"
    done = sum(r.status != "running" for r in job.runs)
    plan = getattr(job, "plan", None)
    text = f"**{job.status() if job.stopped or not job.done else 'done'}** · {len(job.runs)} runs started, " \
           f"{done} finished" + (f" ({plan['runs']} planned)" if plan else "")
    if not job.done:
        text += f" · {eta_text(job)}"
    text += _stop_note(job)
    if job.done and job.result is not None and getattr(job.result, "best_lr", None):
        text += " · best learning rates: " + ", ".join(f"{v} {figures.fmt_number(r)}"
                                                        for v, r in job.result.best_lr.items())
    return text


def module_choices(modules: list[str]) -> list[tuple[str, str]]:
    """(label, module) pairs for the module pickers: the short name the figures use (``L0.q``) with the full name
    after it, so a picker and a legend read alike and 12 MiniLM modules stay tellable apart."""
    short = getattr(figures, "short_names", lambda ms: {m: m for m in ms})(modules)
    return [(m if short[m] == m else f"{short[m]} ({m})", m) for m in modules]


def modules_of(runs: list[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for r in runs:
        for m in r.snapshot_modules("spectra", "singular_values"):
            seen.setdefault(m, None)
    return list(seen)


# -- Inspect and Landscape ------------------------------------------------------------------------------------

def run_choices(root: str) -> list[str]:
    df = store(root).list()
    return [] if df.empty else df.id.tolist()


def run_label(row) -> str:
    """A saved run as a person finds it in a list: ``variant · task · time`` (the time it was created)."""
    created = str(row.get("created") or "").replace("T", " ")
    return " · ".join(str(x) for x in (row.get("variant") or "?", row.get("task") or "?", created or row["id"]))


def run_options(root: str) -> list[tuple[str, str]]:
    """(label, run id) pairs, newest first, for the run pickers: the label reads ``variant · task · time``, the
    value stays the run id (two runs with one label get the id's tail added)."""
    df = store(root).list()
    if df.empty:
        return []
    rows = df.to_dict("records")
    labels = [run_label(r) for r in rows]
    return [(f"{label} · {r['id'][-6:]}" if labels.count(label) > 1 else label, r["id"])
            for label, r in zip(labels, rows)]


def load_run(root: str, run_id: str) -> Run:
    if not run_id:
        raise ConfigError("choose a saved run")
    path = store(root).safe_path(run_id)
    stamp = max((p.stat().st_mtime for p in path.glob("*") if p.is_file()), default=0.0)
    return _load_cached(root, run_id, stamp)


@functools.lru_cache(maxsize=8)
def _load_cached(root: str, run_id: str, stamp: float) -> Run:
    return store(root).load(run_id)


def run_steps(root: str, run_id: str) -> tuple[int, int, list[str]]:
    """Probe steps of a run (min, max) and its modules, for the Inspect tab's slider and dropdown."""
    run = load_run(root, run_id)
    steps = run.snapshot_steps("spectra", "singular_values") or [0]
    # a run with one probe step (steps=1, or diverged at step 0) still needs a slider whose ends differ: the
    # extra step shows the same, latest snapshot
    return min(steps), max(max(steps), min(steps) + 1), modules_of([run])


def snapshot_cadence(root: str, run_id: str) -> int:
    """Steps between two snapshots of the saved run (the most common gap; 1 for a run with one snapshot): the Inspect
    slider moves by it, so each stop shows a new snapshot."""
    steps = load_run(root, run_id).snapshot_steps("spectra", "singular_values")
    gaps = [b - a for a, b in zip(steps, steps[1:]) if b > a]
    return max(set(gaps), key=gaps.count) if gaps else 1


def frequency_basis_of(root: str, run_id: str) -> str:
    """The frequency basis the saved run's variant places its spectral locations in (the Inspect tab's default)."""
    return figures.frequency_basis(load_run(root, run_id))


def inspect_view(root: str, run_id: str, step: Any, module: str | None, kind: str = "dct") -> tuple:
    """Everything about one module of a saved run at one step (frequency maps in the ``kind`` basis)."""
    run = load_run(root, run_id)
    step = None if step is None else int(step)
    s = run.summary
    head = (f"**{run.variant}** on **{run.task}** · {run.status} · {s.get('trainable_params', 0):,} parameters · "
            f"final {s.get('metric')} {figures.fmt_number(s.get('metric_value'))}")
    origin = origin_note(run.config)
    head += f" · {origin}" if origin else ""

    def mark(fig):  # the selected step on every time-series panel
        figures.mark_step(fig, step)
        return fig

    return (head, figures.spectra(run, module=module, step=step),
            figures.frequency_map(run, module, kind=kind or "dct", step=step),
            mark(figures.effective_rank_over_time(run)), mark(figures.subspace_similarity(run)),
            mark(figures.gradient_norms(run)), mark(figures.allocation_heatmap(run)),
            figures.variant_views(run, module, step=step), figures.location_trajectories(run, module),
            mark(figures.loss_curves(run)), mark(figures.validation_metric(run)))


def origin_note(config: dict[str, Any]) -> str:
    """Where a run's adapter came from when it was not trained here ('' for a trained run), for Inspect's head."""
    generated, source = config.get("generated"), config.get("source")
    if isinstance(generated, dict):
        condition = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                              for k, v in (generated.get("condition") or {}).items())
        flag = " (outside the trained range)" if generated.get("extrapolated") else ""
        return f"generated by `{_plain(generated.get('generator'))}` at {_plain(condition)}{flag}, not trained"
    if source and (config.get("imported") or config.get("steps") == 0):  # the dashboard's or `workbench inspect`'s
        return f"opened from `{_plain(source)}`, not trained here"
    return f"trained by `{_plain(source)}`" if source else ""  # e.g. the HF Trainer's ProbeCallback


def _plain(value: Any) -> str:
    return json.dumps(str(value))[1:-1].replace("`", "'")[:200]


def learns_magnitudes(root: str, run_id: str) -> bool:
    """Whether the saved adapter holds a learned magnitude (a tensor named ``...magnitude``, DoRA-style m): read
    from the safetensors header alone, so Inspect restores the adapter only for runs that have one to show."""
    from safetensors import safe_open

    path = store(root).safe_path(run_id) / "adapter" / "adapter.safetensors"
    if not path.is_file() or path.is_symlink():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return any(k.split(".")[-1] == "magnitude" for k in f.keys())
    except (OSError, ValueError, RuntimeError):
        return False


def inspect_magnitudes(root: str, run_id: str, module: str | None = None):
    """DoRA's own view (``figures.magnitude_view``: learned magnitudes against the ‖W0‖ row norms) of a saved run,
    its adapter restored on the cached task; a one-line figure for runs that learn no magnitude."""
    run = load_run(root, run_id)
    if not learns_magnitudes(root, run_id):
        return figures.magnitude_view(SimpleNamespace(adaptation=None, path=None, variant=run.variant))
    ad = run.restore(task_of(run))
    return figures.magnitude_view(SimpleNamespace(adaptation=ad, path=None, variant=run.variant), module)


def compute_landscape(root: str, run_id: str, mode: str, dims: Any, steps: Any, span: Any,
                      progress: Callable[[float], None] | None = None):
    """The landscape figure and its line (centre loss, ε-sharpness) of a saved run, computed here and now."""
    run = load_run(root, run_id)
    dims, steps, span = landscape_numbers(dims, steps, span)
    task = task_of(run)
    ad = run.restore(task)
    result = landscape(ad, task, mode=mode, dims=dims, steps=steps, span=span, progress=progress)
    return figures.landscape(result), f"centre loss {result['center_loss']:.4g} · {figures.sharpness_text(result)}"


def landscape_numbers(dims: Any, steps: Any, span: Any) -> tuple[int, int, float]:
    """The landscape's own boxes (not declared fields), checked with a message naming the box and its range."""
    return (parse_number("dimensions", dims, int, 1, 2), parse_number("grid points", steps, int, 3, 51),
            parse_number("span", span, float, 0.01, 10))


#: forward passes that Keskar's ε-sharpness adds to a landscape (landscape.epsilon_sharpness: the centre, ten
#: ascent steps of a forward and a backward, about three forwards each, and the last point)
SHARPNESS_FORWARDS = 32
LANDSCAPE_BATCH = 256  # the fixed validation batch the landscape evaluates every point on (probes.landscape)


def landscape_plan(root: str, run_id: str, dims: int, steps: int) -> dict[str, Any]:
    """Points to evaluate and, from the run's own pace, the seconds they would take: one point is a forward pass
    on a batch of :data:`LANDSCAPE_BATCH`, about a third of a training step (forward and backward) scaled from the
    run's batch size."""
    run = load_run(root, run_id)
    points = steps ** dims + 1
    pace, batch = run.summary.get("seconds_per_step"), run.config.get("batch_size") or 32
    per_point = None
    if isinstance(pace, (int, float)) and math.isfinite(pace) and pace > 0:
        per_point = pace / 3 * max(LANDSCAPE_BATCH / batch, 1.0)
    seconds = None if per_point is None else (points + SHARPNESS_FORWARDS) * per_point
    return {"points": points, "seconds": seconds, "per_point": per_point}


def landscape_mode(mode: str) -> str:
    """The landscape's direction box, checked (:data:`workbench.probes.landscape.MODES`)."""
    if mode not in MODES:
        raise ConfigError(f"directions in={mode!r} is invalid; choose one of {', '.join(map(repr, MODES))}")
    return mode


def landscape_work(job, load, mode: str, dims: int, steps: int, span: float) -> dict[str, Any]:
    """The body of a landscape job, shared by the dashboard and the notebook panel
    (:class:`workbench.widgets.landscape.LandscapePanel`): ``load()`` returns (adaptation, task); the grid reports
    its progress on ``job`` and Stop ends it between any two grid points. Returns the landscape's dict."""
    job.set_phase("rebuilding the run's task and adapter")
    ad, task = load()
    job.check_stop()
    job.set_phase(f"evaluating {steps ** dims:,} points of the loss grid")
    job.progress_since = time.perf_counter()

    def progress(fraction: float) -> None:
        job.check_stop()  # Stop ends the job between two grid points
        job.progress = fraction
        job.version += 1

    result = landscape(ad, task, mode=mode, dims=dims, steps=steps, span=span, progress=progress)
    job.phase = ""
    return result


def start_landscape(root: str, run_id: str, mode: str, dims: Any, steps: Any, span: Any, confirm: bool = False,
                    owner: str | None = None) -> str:
    """Compute a landscape in the background (a job with Stop between any two grid points); above
    :data:`CONFIRM_SECONDS` of estimated work it raises :class:`NeedsConfirmation` unless ``confirm``."""
    dims, steps, span = landscape_numbers(dims, steps, span)
    landscape_mode(mode)
    plan = landscape_plan(root, run_id, dims, steps)
    if not confirm and plan["seconds"] is not None and plan["seconds"] > CONFIRM_SECONDS:
        raise NeedsConfirmation(
            f"This landscape evaluates {plan['points']:,} points, about {duration(plan['seconds'])} at "
            f"{plan['per_point']:.3g} s a point (from the run's training pace). Press **Start anyway** to compute "
            f"it, or choose 1 dimension or fewer grid points.")

    def load():
        run = load_run(root, run_id)
        task = task_of(run)
        return run.restore(task), task

    def work(job):
        result = landscape_work(job, load, mode, dims, steps, span)
        return (figures.landscape(result),
                f"centre loss {result['center_loss']:.4g} · {figures.sharpness_text(result)}")

    job = jobs.start("landscape", work, owner=owner)
    job.plan = plan
    return job.id


def landscape_status(job_id: str | None) -> str:
    job = jobs.get(job_id)
    if job is None:
        return "Pick a saved run and press **Compute**."
    if job.error:
        return f"**Failed:** `{job.error}`"
    if job.done:
        if job.stopped:
            return f"**stopped** at {100 * (job.progress or 0):.0f}% of the grid{_stop_note(job)}."
        return job.result[1] if job.result else "done"
    text = f"**{job.status()}** · {job.phase or 'starting'}"
    if job.progress and job.progress_since is not None:
        left = (time.perf_counter() - job.progress_since) / job.progress * (1 - job.progress)
        text += f" · {100 * job.progress:.0f}% · about {duration(left)} left"
    return text


def landscape_figure(job_id: str | None):
    """The finished landscape's figure; None before (the page keeps what it shows)."""
    job = jobs.get(job_id)
    if job is None or not job.done or not job.result:
        return None
    return job.result[0]


#: the Present tab's views of one saved run: (label, figure builder), one at a time, large, for a projector
PRESENT_VIEWS = {"loss": "loss_curves", "validation metric": "validation_metric", "spectrum of ΔW": "spectra",
                 "allocation": "allocation_heatmap", "frequency map": "frequency_map",
                 "effective rank": "effective_rank_over_time", "gradient norms": "gradient_norms"}
PRESENT_HEIGHT = 560  # fits a 1024×768 projector under the tab bar and the selector, in a browser's full screen
PRESENT_FONT = 18


def present_view(root: str, run_id: str, view: str) -> tuple[Any, str]:
    """One large figure of a saved run for a projector (1024×768): the view ``view`` of :data:`PRESENT_VIEWS`,
    PRESENT_HEIGHT pixels high with PRESENT_FONT-point text, and its caption."""
    if view not in PRESENT_VIEWS:
        raise ConfigError(f"view={view!r} is invalid; choose one of {', '.join(map(repr, PRESENT_VIEWS))}")
    run = load_run(root, run_id)
    builder = PRESENT_VIEWS[view]
    fn = getattr(figures, builder)
    if builder == "frequency_map":
        fig = fn(run, None, kind=figures.frequency_basis(run))
    else:
        fig = fn(run)
    fig.update_layout(height=PRESENT_HEIGHT, font=dict(size=PRESENT_FONT), title_font=dict(size=PRESENT_FONT + 6),
                      legend_font=dict(size=PRESENT_FONT - 2))
    return fig, figures.caption(builder)


# -- Runs -----------------------------------------------------------------------------------------------------

COMPARISONS_FILE = "comparisons.jsonl"  # in the store's root: one line per Compare job, the runs it made


def record_comparison(root: str, job: jobs.Job, task_name: str) -> None:
    """Append the Compare job's runs to the store's :data:`COMPARISONS_FILE`, so the Runs tab groups them under
    one comparison (``compare-3 · 12-02 12:41 · lora, dora``). A file that cannot be written loses the grouping only."""
    final, sweep = comparison_runs(job)
    if not final and not sweep:
        return
    variants = ", ".join(dict.fromkeys(r.variant for r in final + sweep))
    entry = {"comparison": f"{job.id} · {time.strftime('%m-%d %H:%M', time.localtime(job.started))} · {variants}",
             "task": task_name,
             "runs": [r.id for r in final], "sweep": [r.id for r in sweep]}
    try:
        with open(store(root).root / COMPARISONS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError:
        pass


def comparison_groups(root: str) -> dict[str, str]:
    """``{run id: comparison label}`` from the store's :data:`COMPARISONS_FILE` (sweep runs marked so); lines that
    cannot be read are skipped."""
    path = store(root).root / COMPARISONS_FILE
    groups: dict[str, str] = {}
    if not path.is_file() or path.is_symlink():
        return groups
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            for run_id in entry.get("runs", []):
                groups[str(run_id)] = str(entry["comparison"])
            for run_id in entry.get("sweep", []):
                groups[str(run_id)] = f"{entry['comparison']} (sweep)"
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return groups


def runs_table(root: str, query: str = "") -> pd.DataFrame:
    """The run store as a table, newest first, with the comparison each run was made by (blank: a run of its
    own); runs of one comparison are listed together. ``query`` keeps rows containing the text."""
    df = store(root).list().round({"final_loss": 5, "metric_value": 5, "lr": 6})
    groups = comparison_groups(root)
    df.insert(min(4, len(df.columns)), "comparison", [groups.get(i, "") for i in df.id])  # after the status
    if groups and not df.empty:  # each comparison's runs together, at the place of its newest run
        first = {g: i for i, g in reversed(list(enumerate(df.comparison))) if g}
        key = [first.get(g, i) if g else i for i, g in enumerate(df.comparison)]
        df = df.assign(_k=key, _i=range(len(df))).sort_values(["_k", "_i"]).drop(columns=["_k", "_i"])
        df = df.reset_index(drop=True)
    query = (query or "").strip().lower()
    if query and not df.empty:
        text = df.astype(object).where(df.notna(), "").astype(str).apply(lambda row: " ".join(row).lower(),
                                                                         axis=1)  # unreadable rows hold NaN
        df = df[text.str.contains(query, regex=False)]
    return df


def run_id_of_row(table: Any, row: Any) -> str | None:
    """The run id in row ``row`` of the Runs table as the page holds it (a DataFrame or rows), None if out of range."""
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    try:
        value = df["id"].iloc[int(row)]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return str(value) if value else None


def delete_question(root: str, run_id: str) -> str:
    """What the first press of Delete shows: which run (as a person knows it) would go, and how to confirm. The
    second button deletes; nothing is deleted by one click (a shared classroom store keeps the teacher's run)."""
    run_id = _chosen_run(run_id)
    row = store(root).list()
    row = row[row.id == run_id]
    if row.empty:
        raise ConfigError(f"run {run_id!r} is not in the run store; press Refresh")
    label = run_label(row.iloc[0].to_dict())
    return (f"⚠️ Delete **{label}** (`{run_id}`) for good? Its adapter, metrics and snapshots go. Press **Confirm "
            f"delete** to delete it, or choose another run.")


def run_as_code(root: str, run_id: str) -> str:
    """This run as code: the ``wb.train(...)`` call that repeats it (every value that did not come from a declared
    default, a task default or a preset, which the same call applies again), and, where the variant has a native
    PEFT form (``Variant.peft_settings``), the PEFT ``LoraConfig`` under which its exported adapter loads."""
    run = load_run(root, run_id)
    cls = get_variant(run.variant)
    sources = run.config.get("sources") or {}
    settings = run.config.get("settings") or {k: run.config.get(k) for k in ("steps", "lr", "batch_size", "seed")}
    picked = {k: v for k, v in settings.items()
              if (sources.get("settings") or {}).get(k, "explicit") == "explicit" or k == "seed"}
    config = {k: v for k, v in (run.config.get("config") or {}).items()
              if (sources.get("config") or {}).get(k, "explicit") == "explicit"}
    options = run.config.get("task_options") or {}
    changed = {k: v for k, v in options.items() if v != _task_option_defaults(run.task).get(k, v)}
    lines = ["import workbench as wb", "",
             f"run = wb.train({run.task!r}, {cls.name!r},"
             + (f" task_options={changed!r}," if changed else ""),
             f"               settings={picked!r},",
             f"               config={config!r}, store='runs')"]
    text = ("**This run as code** (values from defaults, the task and the variant's preset are applied again by "
            "the same call):\n\n```python\n" + "\n".join(lines) + "\n```")
    peft = cls.peft_settings(cls.Config.from_kwargs(run.config.get("config") or {}))
    targets = modules_of([run]) or run.config.get("targets")  # module names: PEFT does not read our globs
    if peft:
        args = ", ".join(f"{k}={v!r}" for k, v in peft.items())
        text += ("\n\n**PEFT**: the exported adapter (*Prepare downloads* → the `-peft.zip`) loads under this "
                 "`LoraConfig`:\n\n```python\nfrom peft import LoraConfig, PeftModel, get_peft_model\n\n"
                 f"config = LoraConfig({args}, target_modules={targets!r}, lora_dropout=0.0)\n"
                 "model = get_peft_model(model, config)  # the same form in PEFT, to train there\n"
                 "# or load the exported adapter: PeftModel.from_pretrained(model, 'path/to/peft')\n```")
    else:
        text += (f"\n\nPEFT has no native form of **{cls.name}**: *Prepare downloads* exports its ΔW as a plain "
                 f"LoRA (a truncated SVD of each layer's update).")
    return text


def _task_option_defaults(name: str) -> dict[str, Any]:
    """The values a task's options take when none is given (those derived from others included, through the option
    class's ``build`` where it has one), to tell a recorded option the user chose from one the task filled in."""
    option_class = task_option_class(name)
    if option_class is None:
        return {}
    build = getattr(option_class, "build", None)
    try:
        return (build(name, name.partition(":")[2], {}) if callable(build) else option_class.from_kwargs({})).to_dict()
    except ConfigError:
        return {f["name"]: f["default"] for f in option_class.fields_info()}


def _chosen_run(run_id: Any) -> str:
    """The run id a "run" box sent, or a ConfigError: nothing chosen, or not text (the box takes custom values, so
    a hand-written client may send a list or a dict)."""
    if not run_id:
        raise ConfigError("choose a run to delete")
    if not isinstance(run_id, str):
        raise ConfigError(f"run: {str(run_id)[:60]!r} is not a run id; choose a run from the list")
    return run_id


def delete_run(root: str, run_id: str) -> str:
    """Delete a saved run; refused while a job is training it (press Stop first): deleting it then would let the
    job's final save bring it back."""
    run_id = _chosen_run(run_id)
    if run_id in jobs.running_run_ids():
        raise ConfigError(f"run {run_id!r} is still training; press Stop, wait for it to end, then delete it")
    store(root).delete(run_id)
    _load_cached.cache_clear()
    return f"Deleted run `{run_id}`."


ADAPTER_FILES = ("adapter.safetensors", "adaptation.json")  # what Adaptation.save writes, and all a zip holds


def download_files(root: str, run_id: str) -> list[str]:
    """The run's adapter (safetensors + json), its metrics as CSV, and a PEFT export where one exists.

    Built in a fresh temporary folder (never inside the run store, so nothing planted there is overwritten, and
    inside Gradio's allowed paths wherever ``--runs`` lies). The zip holds only the adapter's own regular files;
    a run folder, adapter folder or file that is a link or resolves outside the store is refused."""
    run_store = store(root)
    path = run_store.safe_path(run_id)
    run = load_run(root, run_id)
    _forget_old_downloads()
    out_dir = Path(tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX))
    out = []
    adapter = path / "adapter"
    if adapter.exists():
        files = [adapter / name for name in ADAPTER_FILES if (adapter / name).exists()]
        for f in [adapter, *files]:
            if f.is_symlink() or not _inside(f, run_store.root) or not (f.is_dir() if f == adapter else f.is_file()):
                raise ConfigError(f"run {run_id!r}: {f.relative_to(path)} is a link or lies outside the run store; "
                                  f"no download is built")
        zipped = out_dir / f"{run_id}-adapter.zip"
        with zipfile.ZipFile(zipped, "w") as z:
            for f in files:
                z.write(f, f.name)
        out.append(str(zipped))
    csv = out_dir / f"{run_id}-metrics.csv"
    run.metrics.to_csv(csv, index=False)
    out.append(str(csv))
    try:
        task = task_of(run)
        export_dir = out_dir / "peft"
        export_peft(run.restore(task), export_dir)
        archive = shutil.make_archive(str(out_dir / f"{run_id}-peft"), "zip", export_dir)
        out.append(archive)
    except (ConfigError, FileNotFoundError):
        pass  # no linear ΔW or no adapter: nothing to export for PEFT
    return out


DOWNLOAD_PREFIX = "workbench-download-"
DOWNLOAD_MAX_AGE_SECONDS = 3600.0  # Gradio copies served files into its own cache; ours go after an hour


def _forget_old_downloads() -> None:
    """Remove this user's download folders older than DOWNLOAD_MAX_AGE_SECONDS, so the temp folder does not grow
    with every press of "Prepare downloads" (links are never followed)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{DOWNLOAD_PREFIX}*"):
        try:
            mine = not hasattr(os, "getuid") or folder.stat().st_uid == os.getuid()
            if (mine and folder.is_dir() and not folder.is_symlink()
                    and time.time() - folder.stat().st_mtime > DOWNLOAD_MAX_AGE_SECONDS):
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


