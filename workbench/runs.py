"""Runs and the on-disk run store.

A :class:`Run` is what ``train()`` returns: its config, status, summary, a long table of metrics
(``step, probe, module, key, value``), array snapshots by ``(step, probe, module, name)``, and the live
:class:`~workbench.adapt.Adaptation` (or a way to rebuild it: :meth:`Run.restore`).

:class:`RunStore` keeps runs as ``<root>/<id>/`` with ``run.json``, ``metrics.jsonl``,
``snapshots.safetensors`` and ``adapter/``. Metrics are appended while training, and every other file is
written atomically (temp file + rename), so a killed run stays readable and a crash never corrupts a saved one.

A hostile or careless folder never takes the store down (issue 16): ``list()`` shows a run whose ``run.json``
cannot be read as an ``unreadable`` row naming the file; a run being trained keeps a ``heartbeat.json`` (pid, host,
time), and one whose process is gone is listed as ``interrupted``; a running run cannot be deleted, and a save never
recreates a deleted run; run folders that are links or resolve outside the store are refused; a corrupted file is a
:class:`CorruptRunError` naming it (relative to the store, never the absolute path).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file

from .errors import ConfigError
from .io import atomic_save_safetensors, atomic_write_json, atomic_write_text

__all__ = ["Run", "RunStore", "METRIC_COLUMNS", "CorruptRunError"]

METRIC_COLUMNS = ["step", "probe", "module", "key", "value"]
SnapshotKey = tuple[int, str, str, str]  # (step, probe, module, name)
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,120}")  # used with fullmatch: no trailing newline
LIST_COLUMNS = ["id", "task", "variant", "status", "steps", "lr", "seed", "trainable_params", "final_loss",
                "metric", "metric_value", "created", "problem"]
HEARTBEAT = "heartbeat.json"
HEARTBEAT_SECONDS = 5.0        # a running run's heartbeat is refreshed at most this often (on metric appends)
STALE_SECONDS = 600.0          # a heartbeat from another host (pid unknowable) this old means the run was killed
TMP_MAX_AGE_SECONDS = 3600.0   # atomic-write leftovers (``.<name>.<random>.tmp``) older than this are removed
SNAPSHOT_SECONDS = 10.0        # while training, new snapshots are written at most this often (a killed run keeps them)


class CorruptRunError(ValueError):
    """A stored file cannot be read; the message names the file relative to the store."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def new_run_id(variant: str, task: str) -> str:
    """``<time>-<task>-<variant>-<random>``: sortable by time; the random part (32 bits) keeps runs started in the
    same second by several workers apart (and :meth:`RunStore.begin` refuses a taken one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9+-]+", "-", f"{task}-{variant}").strip("-")[:60]
    return f"{stamp}-{slug}-{secrets.token_hex(4)}"


def _fresh_id(run_id: str) -> str:
    """``run_id`` with a new random suffix (the part after its last ``-``)."""
    return f"{run_id.rsplit('-', 1)[0]}-{secrets.token_hex(4)}"


@dataclass
class Run:
    id: str
    config: dict[str, Any]
    status: str = "running"
    summary: dict[str, Any] = field(default_factory=dict)
    snapshots: dict[SnapshotKey, torch.Tensor] = field(default_factory=dict)
    adaptation: Any = None
    path: Path | None = None
    _rows: list[tuple] = field(default_factory=list, repr=False)
    _frame: tuple[int, pd.DataFrame] | None = field(default=None, repr=False)  # (rows it holds, the frame)

    # -- recording -------------------------------------------------------------------------------------------
    def log(self, step: int, probe: str, module: str, key: str, value: float) -> None:
        self._rows.append((int(step), probe, module, key, float(value)))

    def add_snapshot(self, step: int, probe: str, module: str, name: str, tensor: torch.Tensor) -> None:
        self.snapshots[(int(step), probe, module, name)] = tensor.detach().to("cpu", torch.float32).contiguous()

    # -- reading ---------------------------------------------------------------------------------------------
    @property
    def metrics(self) -> pd.DataFrame:
        """All records as a long DataFrame (step, probe, module, key, value). Safe to read while training appends
        from another thread (the dashboard does): it reads a snapshot of the first n rows, cached by n."""
        n = len(self._rows)
        if self._frame is None or self._frame[0] != n:
            self._frame = (n, pd.DataFrame(self._rows[:n], columns=METRIC_COLUMNS))
        return self._frame[1]

    @property
    def variant(self) -> str:
        return self.config.get("variant", "?")

    @property
    def task(self) -> str:
        return self.config.get("task", "?")

    @property
    def label(self) -> str:
        """A short human label: variant and, where it matters, the seed."""
        return f"{self.variant} (seed {self.config.get('seed', 0)})"

    def loss_curve(self, probe: str = "train", key: str = "loss") -> pd.DataFrame:
        m = self.metrics
        return m[(m.probe == probe) & (m.key == key)][["step", "value"]].reset_index(drop=True)

    def snapshot_steps(self, probe: str, name: str, module: str | None = None) -> list[int]:
        keys = list(self.snapshots)  # one atomic copy: training may add snapshots from another thread
        return sorted({s for (s, p, mod, n) in keys if p == probe and n == name and (module is None or mod == module)})

    def snapshot(self, probe: str, name: str, module: str, step: int | None = None) -> torch.Tensor | None:
        """The latest snapshot at or before ``step`` (the last one when ``step`` is None)."""
        steps = [s for s in self.snapshot_steps(probe, name, module) if step is None or s <= step]
        return self.snapshots[(steps[-1], probe, module, name)] if steps else None

    def snapshot_modules(self, probe: str, name: str) -> list[str]:
        seen: dict[str, None] = {}
        for (_, p, mod, n) in list(self.snapshots):
            if p == probe and n == name:
                seen.setdefault(mod, None)
        return list(seen)

    def restore(self, task=None):
        """Rebuild the trained adaptation on a fresh ``task.model()`` (from ``adapter/`` of a stored run)."""
        from . import tasks as task_registry
        from .adapt import load_adaptation

        if self.path is None or not (self.path / "adapter").exists():
            raise FileNotFoundError(f"run {self.id} has no saved adapter to restore from")
        task = task or task_registry.get(self.config["task"], **self.config.get("task_options", {}))
        try:
            self.adaptation = load_adaptation(task.model(), self.path / "adapter")
        except ConfigError as exc:  # a mismatch with the model: kept, without the store's absolute path
            raise ConfigError(f"run {self.id}: {_short(exc, 1000)}") from exc
        except Exception as exc:  # noqa: BLE001 - a truncated or edited file: name it, never a bare error
            raise CorruptRunError(f"run {self.id}: adapter/ cannot be read ({type(exc).__name__}: "
                                  f"{_short(exc)})") from exc
        return self.adaptation


def _short(exc: BaseException, limit: int = 200) -> str:
    """An exception's text without absolute paths (they would reveal where the store lives)."""
    text = re.sub(r"(/[^\s'\"]+)+/", "", str(exc))
    return text[:limit]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:
        return None  # NaN is not JSON
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


class RunStore:
    """Runs on disk under ``root``: ``save``, ``load``, ``list``, ``delete``, plus incremental writes used by
    ``train()`` (``begin``, ``append``)."""

    def __init__(self, root: str | os.PathLike = "runs"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not _ID_RE.fullmatch(run_id):
            raise ValueError(f"invalid run id {run_id!r}")
        return self.root / run_id

    def safe_path(self, run_id: str) -> Path:
        """``path(run_id)`` for reading or deleting: refused if the folder is a link or resolves outside the store
        (a planted symlink must not make the store read, zip or delete files elsewhere)."""
        path = self.path(run_id)
        if path.is_symlink() or not _inside(path, self.root):
            raise ConfigError(f"run {run_id!r} is a link or lies outside the run store; it is not opened")
        return path

    # -- heartbeat: is a "running" run still alive? -------------------------------------------------------------
    def beat(self, run: Run, force: bool = False) -> None:
        """Record that ``run`` is alive (pid, host, time), at most every HEARTBEAT_SECONDS unless ``force``."""
        now = time.time()
        if not force and now - getattr(run, "_last_beat", 0.0) < HEARTBEAT_SECONDS:
            return
        run._last_beat = now
        path = self.path(run.id)
        if path.is_dir():
            atomic_write_json(path / HEARTBEAT, {"pid": os.getpid(), "host": socket.gethostname(), "time": now})

    def is_alive(self, run_id: str) -> bool:
        """Whether a process is still training ``run_id``: its heartbeat names a live pid on this host (or, from
        another host, is younger than STALE_SECONDS)."""
        try:
            beat = json.loads((self.path(run_id) / HEARTBEAT).read_text())
            pid, host, when = int(beat["pid"]), str(beat["host"]), float(beat["time"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if host == socket.gethostname():
            return _pid_alive(pid)
        return time.time() - when < STALE_SECONDS

    def _deleted(self, run: Run) -> bool:
        """A run that was begun or saved here and whose folder is gone since: deleted, never recreated."""
        return run.path is not None and run.path == self.path(run.id) and not run.path.is_dir()

    # -- incremental writes while training ------------------------------------------------------------------
    def begin(self, run: Run) -> None:
        """Claim a folder for a new run. The folder is created exclusively: when another writer (a Ray worker, a
        second dashboard) already holds that id, the run takes a fresh id, so two concurrent runs never share
        or overwrite one folder (issue 19)."""
        for _ in range(100):
            path = self.path(run.id)
            try:
                path.mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                run.id = _fresh_id(run.id)
        else:
            raise FileExistsError(f"no free run id in the run store for {run.id!r}")
        run.path = path
        (run.path / "metrics.jsonl").touch()
        self._write_meta(run)
        self.beat(run, force=True)

    def append(self, run: Run, rows: list[tuple]) -> None:
        """Append metric rows (flushed to the OS at once, so a killed process keeps them)."""
        if not rows or self._deleted(run):
            return
        try:
            with open(self.path(run.id) / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(dict(zip(METRIC_COLUMNS, _jsonable(list(r))))) + "\n" for r in rows))
                f.flush()
            self.beat(run)
            self._snapshots_while_training(run)
        except FileNotFoundError:
            if not self._deleted(run):
                raise  # the folder is there: a real error
            # deleted while this write ran: training goes on, nothing is recreated

    def _snapshots_while_training(self, run: Run) -> None:
        """Write the snapshots taken so far when there are new ones, at most every SNAPSHOT_SECONDS, so a killed
        run keeps its spectra (the whole file is rewritten atomically: readers never see half of it)."""
        now, count = time.time(), len(run.snapshots)
        if count == getattr(run, "_saved_snapshots", 0) or now - getattr(run, "_snapshot_time", 0.0) < SNAPSHOT_SECONDS:
            return
        run._saved_snapshots, run._snapshot_time = count, now
        self.save_snapshots(run)

    def _write_meta(self, run: Run) -> None:
        meta = {"id": run.id, "status": run.status, "config": run.config, "summary": run.summary}
        atomic_write_json(self.path(run.id) / "run.json", _jsonable(meta))

    def save_snapshots(self, run: Run) -> None:
        tensors = {"|".join(map(str, k)): v for k, v in run.snapshots.items()}
        if tensors:
            atomic_save_safetensors(tensors, self.path(run.id) / "snapshots.safetensors")

    # -- whole runs ----------------------------------------------------------------------------------------
    def save(self, run: Run) -> Path | None:
        """Write (or finish writing) a run: metadata, all metrics, snapshots and the adapter. A run deleted while it
        trained is not recreated (returns None)."""
        if self._deleted(run):
            return None
        path = self.path(run.id)
        path.mkdir(parents=True, exist_ok=True)
        run.path = path
        rows = run.metrics.itertuples(index=False, name=None)
        lines = "".join(json.dumps(dict(zip(METRIC_COLUMNS, _jsonable(list(r))))) + "\n" for r in rows)
        atomic_write_text(path / "metrics.jsonl", lines)
        self.save_snapshots(run)
        if run.adaptation is not None:
            run.adaptation.save(path / "adapter")
        self._write_meta(run)
        if run.status != "running":
            (path / HEARTBEAT).unlink(missing_ok=True)
        return path

    def load(self, run_id: str) -> Run:
        """A stored run. The folder name is its id and must be the id its ``run.json`` records (a copied or renamed
        folder is refused, naming both, never read as a second run of that id). A file that cannot be read is
        a :class:`CorruptRunError` naming it; a metrics line cut short by a killed process is skipped."""
        path = self.safe_path(run_id)
        if not (path / "run.json").exists():
            raise FileNotFoundError(f"no run {run_id!r} in the run store")
        meta = self._read_meta(path)
        run = Run(id=run_id, config=meta["config"], status=self._status(run_id, meta), summary=meta["summary"],
                  path=path)
        metrics_file = path / "metrics.jsonl"
        if metrics_file.exists():
            lines = metrics_file.read_text(encoding="utf-8", errors="replace").splitlines()
            for i, line in enumerate(lines, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    if i == len(lines):
                        continue  # the last line cut short by a killed process
                    raise CorruptRunError(f"{run_id}/metrics.jsonl: line {i} is not JSON") from None
                try:
                    value = float("nan") if row["value"] is None else float(row["value"])
                    run._rows.append((int(row["step"]), str(row["probe"]), str(row["module"]), str(row["key"]),
                                      value))
                except (KeyError, TypeError, ValueError):
                    raise CorruptRunError(f"{run_id}/metrics.jsonl: line {i} is not a metric row (it needs "
                                          f"{', '.join(METRIC_COLUMNS)})") from None
        snap_file = path / "snapshots.safetensors"
        if snap_file.exists():
            try:
                for key, tensor in load_file(str(snap_file)).items():
                    step, probe, module, name = key.split("|", 3)
                    run.snapshots[(int(step), probe, module, name)] = tensor
            except Exception as exc:  # noqa: BLE001 - truncated or foreign file: name it
                raise CorruptRunError(f"{run_id}/snapshots.safetensors cannot be read ({type(exc).__name__}: "
                                      f"{_short(exc)})") from None
        return run

    def _read_meta(self, path: Path) -> dict[str, Any]:
        """``run.json`` as a dict with dict ``config`` and ``summary`` and a string ``created``, or a
        CorruptRunError naming the file."""
        where = f"{path.name}/run.json"
        try:
            meta = json.loads((path / "run.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptRunError(f"{where} cannot be read ({type(exc).__name__})") from None
        if not isinstance(meta, dict):
            raise CorruptRunError(f"{where} is not a JSON object")
        for key in ("config", "summary"):
            meta.setdefault(key, {})
            if not isinstance(meta[key], dict):
                raise CorruptRunError(f"{where}: {key!r} is not an object")
        created = meta["config"].get("created")
        if created is not None and not isinstance(created, str):
            raise CorruptRunError(f"{where}: 'created' is not a string")
        if not isinstance(meta.get("status", ""), str):
            raise CorruptRunError(f"{where}: 'status' is not a string")
        recorded = meta.get("id", path.name)
        if recorded != path.name:  # a copied or renamed folder: not a second run under the same id
            shown = recorded if isinstance(recorded, str) and _ID_RE.fullmatch(recorded) else "another id"
            raise CorruptRunError(f"{where} records run {shown!r}: this folder is a copy or was renamed (rename it "
                                  f"back, or delete it: that removes only this folder)")
        return meta

    def _status(self, run_id: str, meta: dict[str, Any]) -> str:
        """The recorded status, except that a "running" run whose process is gone is ``interrupted``."""
        status = meta.get("status") or "unknown"
        if status == "running" and not self.is_alive(run_id):
            return "interrupted"
        return status

    def list(self) -> pd.DataFrame:
        """One row per stored run, newest first. A run whose ``run.json`` cannot be read is an ``unreadable`` row
        whose ``problem`` names the file; folders that are links or whose names are not run ids are left out.
        Stale atomic-write leftovers are removed on the way (:meth:`clean_temporary_files`)."""
        rows, bad = [], []
        for meta_file in sorted(self.root.glob("*/run.json")):
            folder = meta_file.parent
            if folder.is_symlink() or not _ID_RE.fullmatch(folder.name) or not _inside(folder, self.root):
                continue
            try:
                meta = self._read_meta(folder)
            except CorruptRunError as exc:
                bad.append({"id": folder.name, "status": "unreadable", "problem": str(exc)})
                continue
            cfg, summ = meta["config"], meta["summary"]
            rows.append({"id": folder.name, "task": cfg.get("task"), "variant": cfg.get("variant"),
                         "status": self._status(folder.name, meta), "steps": cfg.get("steps"), "lr": cfg.get("lr"),
                         "seed": cfg.get("seed"), "trainable_params": summ.get("trainable_params"),
                         "final_loss": summ.get("final_loss"), "metric": summ.get("metric"),
                         "metric_value": summ.get("metric_value"), "created": cfg.get("created"), "problem": ""})
        self.clean_temporary_files()
        df = pd.DataFrame(rows, columns=LIST_COLUMNS)
        for column in ("lr", "final_loss", "metric_value"):  # a hand-edited run.json may hold text here
            df[column] = pd.to_numeric(df[column], errors="coerce")
        df = df.sort_values("created", ascending=False, na_position="last", key=lambda c: c.astype(str))
        if bad:
            df = pd.concat([df, pd.DataFrame(bad, columns=LIST_COLUMNS)], ignore_index=True)
        return df.reset_index(drop=True)

    def clean_temporary_files(self, max_age: float = TMP_MAX_AGE_SECONDS) -> int:
        """Remove ``.<name>.<random>.tmp`` files (left by a process killed in an atomic write) older than
        ``max_age`` seconds from run folders and their adapters; returns how many went."""
        removed, now = 0, time.time()
        for tmp in [*self.root.glob("*/.*.tmp"), *self.root.glob("*/adapter/.*.tmp")]:
            try:
                if tmp.is_file() and not tmp.is_symlink() and now - tmp.stat().st_mtime > max_age:
                    tmp.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    def delete(self, run_id: str) -> None:
        """Delete a stored run; refused (ConfigError) while a process is still training it: stop it first."""
        path = self.safe_path(run_id)
        if not path.exists():
            raise FileNotFoundError(f"no run {run_id!r} in the run store")
        if self.is_alive(run_id):
            raise ConfigError(f"run {run_id!r} is still training; stop it first, then delete it")
        shutil.rmtree(path)


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` resolves (links followed) to a place inside ``root`` (the store's and the downloads' check)."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
