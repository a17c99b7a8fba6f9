"""Runs and the on-disk run store.

A :class:`Run` is what ``train()`` returns: its config, status, summary, a long table of metrics
(``step, probe, module, key, value``), array snapshots by ``(step, probe, module, name)``, and the live
:class:`~workbench.adapt.Adaptation` (or a way to rebuild it: :meth:`Run.restore`).

:class:`RunStore` keeps runs as ``<root>/<id>/`` with ``run.json``, ``metrics.jsonl``,
``snapshots.safetensors`` and ``adapter/``. Metrics are appended while training, and every other file is
written atomically (temp file + rename), so a killed run stays readable and a crash never corrupts a saved one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file

from .io import atomic_save_safetensors, atomic_write_json, atomic_write_text

__all__ = ["Run", "RunStore", "METRIC_COLUMNS"]

METRIC_COLUMNS = ["step", "probe", "module", "key", "value"]
SnapshotKey = tuple[int, str, str, str]  # (step, probe, module, name)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,120}$")


def new_run_id(variant: str, task: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9+-]+", "-", f"{task}-{variant}").strip("-")[:60]
    return f"{stamp}-{slug}-{secrets.token_hex(2)}"


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
        self.adaptation = load_adaptation(task.model(), self.path / "adapter")
        return self.adaptation


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
        if not _ID_RE.match(run_id):
            raise ValueError(f"invalid run id {run_id!r}")
        return self.root / run_id

    # -- incremental writes while training ------------------------------------------------------------------
    def begin(self, run: Run) -> None:
        run.path = self.path(run.id)
        run.path.mkdir(parents=True, exist_ok=True)
        (run.path / "metrics.jsonl").touch()
        self._write_meta(run)

    def append(self, run: Run, rows: list[tuple]) -> None:
        """Append metric rows (flushed to the OS at once, so a killed process keeps them)."""
        if not rows:
            return
        with open(self.path(run.id) / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(dict(zip(METRIC_COLUMNS, _jsonable(list(r))))) + "\n" for r in rows))
            f.flush()

    def _write_meta(self, run: Run) -> None:
        meta = {"id": run.id, "status": run.status, "config": run.config, "summary": run.summary}
        atomic_write_json(self.path(run.id) / "run.json", _jsonable(meta))

    def save_snapshots(self, run: Run) -> None:
        tensors = {"|".join(map(str, k)): v for k, v in run.snapshots.items()}
        if tensors:
            atomic_save_safetensors(tensors, self.path(run.id) / "snapshots.safetensors")

    # -- whole runs ----------------------------------------------------------------------------------------
    def save(self, run: Run) -> Path:
        """Write (or finish writing) a run: metadata, all metrics, snapshots and the adapter."""
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
        return path

    def load(self, run_id: str) -> Run:
        path = self.path(run_id)
        if not (path / "run.json").exists():
            raise FileNotFoundError(f"no run {run_id!r} in {self.root}")
        meta = json.loads((path / "run.json").read_text())
        run = Run(id=meta["id"], config=meta.get("config", {}), status=meta.get("status", "unknown"),
                  summary=meta.get("summary", {}), path=path)
        metrics_file = path / "metrics.jsonl"
        if metrics_file.exists():
            for line in metrics_file.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed process
                run._rows.append((row["step"], row["probe"], row["module"], row["key"],
                                  float("nan") if row["value"] is None else row["value"]))
        snap_file = path / "snapshots.safetensors"
        if snap_file.exists():
            for key, tensor in load_file(str(snap_file)).items():
                step, probe, module, name = key.split("|", 3)
                run.snapshots[(int(step), probe, module, name)] = tensor
        return run

    def list(self) -> pd.DataFrame:
        """One row per stored run, newest first."""
        rows = []
        for meta_file in self.root.glob("*/run.json"):
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            cfg, summ = meta.get("config", {}), meta.get("summary", {})
            rows.append({"id": meta.get("id"), "task": cfg.get("task"), "variant": cfg.get("variant"),
                         "status": meta.get("status"), "steps": cfg.get("steps"), "lr": cfg.get("lr"),
                         "seed": cfg.get("seed"), "trainable_params": summ.get("trainable_params"),
                         "final_loss": summ.get("final_loss"), "metric": summ.get("metric"),
                         "metric_value": summ.get("metric_value"), "created": cfg.get("created")})
        cols = ["id", "task", "variant", "status", "steps", "lr", "seed", "trainable_params", "final_loss",
                "metric", "metric_value", "created"]
        df = pd.DataFrame(rows, columns=cols)
        return df.sort_values("created", ascending=False, na_position="last").reset_index(drop=True)

    def delete(self, run_id: str) -> None:
        path = self.path(run_id)
        if not path.exists():
            raise FileNotFoundError(f"no run {run_id!r} in {self.root}")
        shutil.rmtree(path)
