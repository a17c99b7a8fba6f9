"""The Runs tab's two ways to bring in an adapter that was not trained here: open an adapter folder (issue 22: a
PEFT folder, ``adapter_config.json`` + ``adapter_model.safetensors``, or a workbench adaptation folder) on a task's
model, and generate a LoRA for a condition with a saved ICM-LoRA generator (issue 21). Plain functions, no Gradio,
as in ``callbacks.py``.

Both make an ordinary run in the store, so Inspect, Landscape, Present and the downloads treat it like a trained one:

* **open**: the folder is read by the library's own reader (:func:`workbench.cli.load_adapter_folder`, i.e.
  ``from_peft`` or ``load_adaptation``) and probed once by :func:`workbench.cli.inspection_run` (every probe, a step-0
  run); ``config["source"]`` says where it came from and ``config["imported"]`` how it was read. A folder on the
  server must lie inside the folders the server was started with (``--data-dir``:
  :func:`~workbench.tasks.base.check_path`); an upload is copied, keeping only the adapter files, into a fresh
  temporary folder that goes once the run is stored.
* **generate**: a generator saved in the store's ``generators/`` folder (:mod:`workbench.generate.shelf`) decodes a
  LoRA at the condition (:func:`workbench.generate.generate_run`, every probe, the family's true ΔW as reference);
  ``config["generated"]`` names the generator, the condition and the trained range.

The slow part (building the task, reading, probing, evaluating) runs as a dashboard job with a status line; what can
be checked without building anything (the folder, the upload, the condition against the trained range) is refused
before a job starts, with the library's message.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from ..cli import inspection_run, load_adapter_folder
from ..errors import ConfigError
from ..generate import list_generators, open_generator
from ..generate.generator import generate_run
from ..tasks.base import check_path
from . import jobs
from .callbacks import _load_cached, build_task, duration, store, task_key
from .forms import parse_number

#: the files an upload may hold (a PEFT adapter folder's, a workbench adaptation's); anything else is left out
ADAPTER_NAMES = ("adapter_config.json", "adapter_model.safetensors", "adaptation.json", "adapter.safetensors")
UPLOAD_PREFIX = "workbench-upload-"
MAX_UNZIPPED = 256 * 2**20  # bytes a zipped upload may unpack to (its compressed size is capped by MAX_UPLOAD)
PROBES = "all"  # every probe on a brought-in adapter, as `workbench inspect` runs them


# -- open an adapter folder ------------------------------------------------------------------------------------

def _kind(folder: Path) -> str:
    """``peft`` or ``workbench``: which reader :func:`~workbench.cli.load_adapter_folder` will use; a ConfigError
    naming the files it looks for otherwise."""
    if (folder / "adapter_config.json").is_file():
        if not (folder / "adapter_model.safetensors").is_file():
            bin_file = (folder / "adapter_model.bin").exists()
            raise ConfigError("open adapter: the PEFT folder has adapter_config.json but no adapter_model.safetensors"
                              + (" (adapter_model.bin is a pickle, which is never read: save it with "
                                 "safe_serialization=True)" if bin_file else ""))
        return "peft"
    if (folder / "adaptation.json").is_file():
        return "workbench"
    raise ConfigError("open adapter: the folder holds neither a PEFT adapter (adapter_config.json + "
                      "adapter_model.safetensors) nor a workbench adaptation (adaptation.json + adapter.safetensors)")


def server_folder(text: str) -> Path:
    """The folder a path box names, inside the folders the server was started with (no limit in a library
    process), existing, and a folder; a ConfigError naming what is wrong otherwise (never where it resolves)."""
    text = str(text).strip()
    check_path("open adapter", "folder", text)
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"open adapter: folder={text!r} is not a folder on the server")
    return folder


def unpack_upload(files: list[Any]) -> tuple[Path, list[str]]:
    """Copy the uploaded adapter files (or the adapter files inside uploaded zips, the dashboard's own downloads
    among them) into a fresh temporary folder; returns it and the names taken. Other files (a README) are left out;
    nothing is written outside the new folder (only the base name of each file or zip member is used)."""
    out = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX))
    taken: list[str] = []
    try:
        for item in files:
            src = Path(getattr(item, "name", item))
            if src.suffix.lower() == ".zip":
                _unzip(src, out, taken)
            elif src.name in ADAPTER_NAMES:
                shutil.copyfile(src, out / src.name)
                taken.append(src.name)
        if not taken:
            raise ConfigError(f"open adapter: the upload holds no adapter file; upload {', '.join(ADAPTER_NAMES[:2])} "
                              f"(PEFT) or {', '.join(ADAPTER_NAMES[2:])} (workbench), or a zip of them")
        return out, taken
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _unzip(src: Path, out: Path, taken: list[str]) -> None:
    try:
        with zipfile.ZipFile(src) as z:
            members = [m for m in z.infolist() if not m.is_dir() and Path(m.filename).name in ADAPTER_NAMES]
            if sum(m.file_size for m in members) > MAX_UNZIPPED:
                raise ConfigError(f"open adapter: {src.name} unpacks to more than {MAX_UNZIPPED // 2**20} MiB")
            for m in members:
                name = Path(m.filename).name
                with z.open(m) as f, open(out / name, "wb") as g:
                    shutil.copyfileobj(f, g)
                taken.append(name)
    except zipfile.BadZipFile:
        raise ConfigError(f"open adapter: {src.name} is not a zip file") from None


def start_import(task_name: str, task_form: Any, folder_text: str, uploads: list[Any] | None, root: str,
                 owner: str | None = None) -> str:
    """Check the inputs (one source: a folder on the server or an upload, holding an adapter; the task's options),
    then, as a job: build the task, read the adapter onto its model, probe it once and store the run. Returns the
    job id; :func:`import_status` says how it goes, :func:`finished_run` gives the run once stored."""
    key = task_key(task_name, task_form)
    given_folder, given_upload = bool(str(folder_text or "").strip()), bool(uploads)
    if given_folder == given_upload:
        raise ConfigError("open adapter: give either a folder on the server or an upload, not both"
                          if given_folder else "open adapter: give a folder on the server, or upload the adapter's "
                                               "files (adapter_config.json + adapter_model.safetensors)")
    if given_folder:
        folder, temporary = server_folder(folder_text), False
        source = str(folder)
    else:
        folder, names = unpack_upload(list(uploads))
        temporary, source = True, "upload: " + ", ".join(names)
    try:
        kind = _kind(folder)
    except ConfigError:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    run_store = store(root)

    def work(job):
        try:
            task = build_task(job, task_name, key)
            job.set_phase(f"reading the {'PEFT' if kind == 'peft' else 'workbench'} adapter onto {task.name}'s model")
            try:
                ad = load_adapter_folder(task.model(), folder)
            except ConfigError as exc:
                raise ConfigError(f"{exc} (on the model of {task.name})") from None
            job.set_phase(f"running every probe on its {len(ad.module_names)} modules")
            run = inspection_run(ad, task, probes=PROBES, source=source)
            run.config.update({"task_options": dict(key), "imported": {"reader": kind, "files": _files(folder)},
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
            job.set_phase("saving the run")
            run_store.save(run)
            _load_cached.cache_clear()
            run.adaptation = None  # on disk now; Inspect restores it where a view needs it
            return run
        finally:
            if temporary:
                shutil.rmtree(folder, ignore_errors=True)

    return jobs.start("import", work, owner=owner).id


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name in ADAPTER_NAMES)


def _reason(job: jobs.Job) -> str:
    """A failed job's message without the exception's class for the library's own refusals (ConfigError: ...)."""
    text = job.error or ""
    for prefix in ("ConfigError: ", "FileNotFoundError: ", "CorruptRunError: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def finished_run(job_id: str | None):
    """The run a finished import or generation job stored (None while it runs, after a failure or a Stop)."""
    job = jobs.get(job_id)
    return job.result if job is not None and job.done and not job.error and not job.stopped else None


def _progress(job_id: str | None, idle: str, failed: str):
    """``(status line, None)`` while the job has no stored run to describe (none yet, failed, running, stopped),
    else ``(None, run)``: the part the open and generate entries share."""
    job = jobs.get(job_id)
    if job is None:
        return idle, None
    if job.error:
        return f"**{failed}:** {_reason(job)}", None
    if not job.done:
        return f"**{job.status()}** · {job.phase or 'starting'} · {duration(time.time() - job.started)} so far", None
    run = finished_run(job_id)
    return ("**stopped** before the run was stored.", None) if run is None else (None, run)


def import_status(job_id: str | None) -> str:
    text, run = _progress(job_id, "Choose the task whose model the adapter was trained on, give its folder on the "
                                  "server or upload its files, and press **Open adapter**.",
                          "Could not open the adapter")
    if run is None:
        return text
    s = run.summary
    return (f"Opened **{run.variant}** on {len(run.config.get('modules') or [])} modules of **{run.task}** as run "
            f"`{run.id}` (from {run.config.get('source')}) · {s.get('metric')} = {_fmt(s.get('metric_value'))}; "
            f"shown in **Inspect**.")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


# -- generate a LoRA ---------------------------------------------------------------------------------------------

def generator_options(root: str) -> list[tuple[str, str]]:
    """(label, name) of each generator saved in the store, newest first: ``name · task · t ∈ [0, 1]``."""
    return [(f"{g['name']} · {g['task']} · {g['condition']} ∈ [{g['range'][0]:g}, {g['range'][1]:g}] · "
             f"{g['checkpoints']} checkpoints", g["name"]) for g in list_generators(store(root))]


def generator_note(root: str, name: str | None) -> str:
    """One line about the chosen generator (its condition and trained range), or how to save one."""
    if not name:
        found = generator_options(root)
        if found:
            return "Choose a generator."
        return (f"No generator saved in this run store yet: fit one (`g = wb.generate.fit_generator(collection)`) "
                f"and save it here with `wb.generate.save_generator(g, {str(store(root).root)!r})`.")
    g = next((g for g in list_generators(store(root)) if g["name"] == name), None)
    if g is None:
        raise ConfigError(f"generator {name!r} is not in the run store; press Refresh")
    lo, hi = g["range"]
    return (f"**{g['name']}** (`{g['id']}`) generates LoRAs for **{g['task']}**, learned from {g['checkpoints']} "
            f"checkpoints; its condition **{g['condition']}** was trained on [{lo:g}, {hi:g}].")


def start_generation(root: str, name: str | None, condition: Any, extrapolate: bool = False,
                     owner: str | None = None) -> str:
    """Check the choice and the condition (the library's own range check, before anything is built; with
    ``extrapolate`` a condition outside the trained range is generated and flagged), then, as a job: decode the
    LoRA, evaluate and probe it on the family's task there, and store the run. Returns the job id."""
    if not name:
        raise ConfigError("generate: choose a saved generator")
    generator = open_generator(store(root), name)
    value = parse_number(generator.condition, condition)
    extrapolate = bool(extrapolate)
    generator.check_condition(value, extrapolate)  # outside the trained range: the library's message, no job
    run_store = store(root)

    def work(job):
        job.set_phase(f"decoding the LoRA at {generator.condition}={value:g} and probing it on "
                      f"{generator.meta['task']}")
        run = generate_run(generator, value, probes=PROBES, extrapolate=extrapolate)
        run.config["generated"] = {**run.config["generated"], "name": name}
        run.config["source"] = f"generated by {generator.id} ({name}) at {generator.condition}={value:g}"
        job.set_phase("saving the run")
        run_store.save(run)
        _load_cached.cache_clear()
        run.adaptation = None
        return run

    return jobs.start("generate", work, owner=owner).id


def generation_status(job_id: str | None) -> str:
    text, run = _progress(job_id, "Choose a generator, give a condition inside its trained range and press "
                                  "**Generate**.", "Could not generate")
    if run is None:
        return text
    s = run.summary
    flag = (" · ⚠️ outside the generator's trained range: flagged as extrapolated"
            if run.config["generated"].get("extrapolated") else "")
    return (f"Generated a **{run.variant}** for **{run.task}** as run `{run.id}` ({run.config['source']}) · "
            f"{s.get('metric')} = {_fmt(s.get('metric_value'))}{flag}; shown in **Inspect**.")
