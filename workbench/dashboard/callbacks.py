"""The dashboard's callbacks as plain functions: no Gradio in here, so tests call them directly.

Each returns values (strings, DataFrames, plotly figures from ``workbench.figures``); bad input raises
:class:`~workbench.errors.ConfigError`, which the app turns into a message in the page. The Train tab's forms are
generated from the declarations (``TrainSettings``, the variant's config, the task's options) and filled with what
``train()`` would use for the chosen (task, variant): task defaults and the variant's preset (:func:`train_forms`).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
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
from ..compare import compare
from ..errors import ConfigError
from ..export import export_peft
from ..probes.landscape import landscape
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
    if not name:
        raise ConfigError("choose a task")
    options = changed_options(task_option_class(name), form, {}, name)
    return get_task(name, tuple(sorted(options.items())))


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
    return (f"## {cls.name}\n*{cls.paper}* · family **{cls.family}** · {flags}\n\n{cls.summary}\n\n"
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
    task = get_task(DEMO_TASK)

    def work(job):
        return train(task, cls.name, settings={"steps": DEMO_STEPS, "lr": 1e-2, "seed": 0, "every": 5},
                     config=dict(cls.example_config), callback=job.on_event, control=job.control, progress=False)

    return jobs.start("demo", work, owner=owner).id


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


def start_training(task_name: str, variant: str, settings_table: Any, config_table: Any, root: str,
                   task_options: Any = None, owner: str | None = None) -> str:
    """Validate everything first (nothing starts on bad input), then train in the background.

    Only the values the user changed from what the forms were filled with (:func:`train_forms`) are passed as
    explicit; every other value is left to ``train()``'s own resolution, so the run records its true source."""
    if not variant:
        raise ConfigError("choose a variant")
    if not task_name:
        raise ConfigError("choose a task")
    cls = get_variant(variant)
    shown = resolved_for(task_name, cls.name)
    settings = changed_options(TrainSettings, settings_table, shown.settings.to_dict(), "train")
    config = changed_options(cls.Config, config_table, shown.config, cls.name)
    task = task_from_form(task_name, task_options)
    final = resolve(task, cls, settings, config)  # the settings' ranges
    # the config is checked against the task's real layer shapes before the worker starts
    cls.Config.from_kwargs(final.config).validate({n: (m.out_features, m.in_features) for n, m in
                                                   _target_modules(task).items()})
    run_store = store(root)

    def work(job):
        return train(task, cls.name, settings=settings, config=config, store=run_store, callback=job.on_event,
                     control=job.control, progress=False)

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
        return "Starting…"
    m = run.metrics
    losses = m[(m.probe == "train") & (m.key == "loss")]
    step = int(losses.step.max()) + 1 if len(losses) else 0
    steps = run.config.get("steps", "?")
    last = f"loss {losses.value.iloc[-1]:.4g}" if len(losses) else "waiting for the first check"
    status = job.status()
    text = f"**{status}** · run `{run.id}` · step {step}/{steps} · {last}"
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


def live_metric(job_id: str | None):
    """The task's metric on validation data at every evaluation of the job's run (the Train tab's metric plot)."""
    job = jobs.get(job_id)
    run = job.run if job is not None else None
    return figures.validation_metric([] if run is None else run)


def live_figures(job_id: str | None, module: str | None = None) -> tuple:
    """Loss, gradient norms, spectrum and allocation of the job's run, as it trains."""
    job = jobs.get(job_id)
    run = job.run if job is not None else None
    if run is None:
        empty = figures.loss_curves([])
        return empty, empty, empty, empty
    return (figures.loss_curves(run), figures.gradient_norms(run), figures.spectra(run, module=module),
            figures.allocation_heatmap(run))


def jobs_finished(job_ids) -> int:
    """How many of ``job_ids`` (None for a tab with no job yet) have ended: when it grows, runs have landed on disk
    and the run pickers refresh."""
    return sum(1 for j in job_ids if (job := jobs.get(j)) is not None and job.done)


def job_version(job_id: str | None) -> int:
    job = jobs.get(job_id)
    return -1 if job is None else job.version


def stop_job(job_id: str | None, owner: str | None = None) -> str:
    """Stop the page's job and every other unfinished job of that kind the session (``owner``) started."""
    jobs.stop(job_id, owner)
    return job_status(job_id)


# -- Compare --------------------------------------------------------------------------------------------------

def start_comparison(task_name: str, chosen: list[str] | None, seeds: Any, steps: Any, lr: Any, root: str,
                     task_options: Any = None, owner: str | None = None) -> str:
    """Compare the chosen variants in the background. ``steps`` blank leaves the run length to ``compare()`` (the
    task's default); ``lr`` is a number or ``sweep`` (each variant's best rate on validation data)."""
    if not chosen:
        raise ConfigError("choose at least one variant to compare")
    for v in chosen:
        get_variant(v)
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
    task = task_from_form(task_name, task_options)
    run_store = store(root)
    length = {"steps": settings["steps"]} if "steps" in settings else {}  # none given: compare() picks

    def work(job):
        return compare(task, list(chosen), seeds=seed_list, lr=settings.get("lr", "sweep"), store=run_store,
                       callback=job.on_event, progress=False, control=job.control, **length)

    return jobs.start("compare", work, owner=owner).id


def setting_values(texts: dict[str, str]) -> dict[str, Any]:
    """Training settings typed from text boxes and checked against their declared ranges (a ConfigError naming the
    field and its range), e.g. ``{"steps": "60"}`` → ``{"steps": 60}``."""
    values = TrainSettings.from_strings(texts)
    TrainSettings.from_kwargs(values).validate()
    return values


def comparison_view(job_id: str | None, module: str | None = None) -> tuple:
    """Table, overlaid losses, and side-by-side spectra, allocation and frequency maps."""
    job = jobs.get(job_id)
    runs = list(job.runs) if job is not None else []
    table = job.result.table if job is not None and job.result is not None else _live_table(runs)
    return (figures.comparison_table(table), figures.loss_curves(runs),
            figures.small_multiples(runs, "spectra", module=module),
            figures.small_multiples(runs, "allocation", module=module),
            figures.small_multiples(runs, "dct", module=module))


def _live_table(runs: list[Run]) -> pd.DataFrame:
    rows = [{"variant": r.variant, "seed": r.config.get("seed"), "lr": r.config.get("lr"), "status": r.status,
             "trainable_params": r.summary.get("trainable_params"), "final_loss": r.summary.get("final_loss"),
             "metric_value": r.summary.get("metric_value"), "seconds_per_step": r.summary.get("seconds_per_step")}
            for r in runs]
    return pd.DataFrame(rows)


def comparison_status(job_id: str | None) -> str:
    job = jobs.get(job_id)
    if job is None:
        return "Pick variants and press **Compare**."
    if job.error:
        return f"**Failed:** `{job.error}`"
    done = sum(r.status != "running" for r in job.runs)
    return (f"**{'done' if job.done else 'running'}** · {len(job.runs)} runs started, {done} finished"
            + (f" · best learning rates: {job.result.best_lr}" if job.done and job.result is not None else ""))


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
            f"final {s.get('metric')} {s.get('metric_value')}")

    def mark(fig):  # the selected step on every time-series panel
        figures.mark_step(fig, step)
        return fig

    return (head, figures.spectra(run, module=module, step=step),
            figures.frequency_map(run, module, kind=kind or "dct", step=step),
            mark(figures.effective_rank_over_time(run)), mark(figures.subspace_similarity(run)),
            mark(figures.gradient_norms(run)), mark(figures.allocation_heatmap(run)),
            figures.variant_views(run, module, step=step), figures.location_trajectories(run, module),
            mark(figures.loss_curves(run)), mark(figures.validation_metric(run)))


def compute_landscape(root: str, run_id: str, mode: str, dims: Any, steps: Any, span: Any,
                      progress: Callable[[float], None] | None = None):
    run = load_run(root, run_id)
    dims = parse_number("dimensions", dims, int, 1, 2)  # not declared fields: the landscape's own boxes
    steps = parse_number("grid points", steps, int, 3, 51)
    span = parse_number("span", span, float, 0.01, 10)
    task = task_of(run)
    ad = run.restore(task)
    result = landscape(ad, task, mode=mode, dims=dims, steps=steps, span=span, progress=progress)
    return figures.landscape(result), f"centre loss {result['center_loss']:.4g} · {figures.sharpness_text(result)}"


# -- Runs -----------------------------------------------------------------------------------------------------

def runs_table(root: str, query: str = "") -> pd.DataFrame:
    df = store(root).list().round({"final_loss": 5, "metric_value": 5, "lr": 6})
    query = (query or "").strip().lower()
    if query and not df.empty:
        text = df.astype(object).where(df.notna(), "").astype(str).apply(lambda row: " ".join(row).lower(),
                                                                         axis=1)  # unreadable rows hold NaN
        df = df[text.str.contains(query, regex=False)]
    return df


def delete_run(root: str, run_id: str) -> str:
    """Delete a saved run; refused while a job is training it (press Stop first): deleting it then would let the
    job's final save bring it back."""
    if not run_id:
        raise ConfigError("choose a run to delete")
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
    import time

    for folder in Path(tempfile.gettempdir()).glob(f"{DOWNLOAD_PREFIX}*"):
        try:
            mine = not hasattr(os, "getuid") or folder.stat().st_uid == os.getuid()
            if (mine and folder.is_dir() and not folder.is_symlink()
                    and time.time() - folder.stat().st_mtime > DOWNLOAD_MAX_AGE_SECONDS):
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


