"""Background jobs: each training or comparison runs in its own thread, registered under a job id.

The page keeps only the job id (a ``gr.State`` must be deep-copyable, a thread is not) and polls with a
``gr.Timer``. A job never raises into the server: an exception is stored on the job and shown in the page.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..events import Start, TrainControl, TrainEvent

_LOCK = threading.Lock()
_JOBS: dict[str, Job] = {}
_IDS = itertools.count(1)
MAX_FINISHED = 64  # finished jobs kept for their pages; older ones are forgotten (their runs are on disk)


@dataclass
class Job:
    id: str
    kind: str
    control: TrainControl = field(default_factory=TrainControl)  # Stop asks every run of the job to end
    runs: list = field(default_factory=list)       # live Run objects, in order of start
    result: Any = None
    error: str | None = None
    done: bool = False
    started: float = field(default_factory=time.time)
    version: int = 0                               # bumped on every event: pollers redraw only on change
    thread: threading.Thread | None = None

    @property
    def run(self):
        return self.runs[-1] if self.runs else None

    def on_event(self, event: TrainEvent) -> None:
        """``train()`` callback: remember the runs and count changes (pollers redraw on a new version)."""
        if isinstance(event, Start):
            self.runs.append(event.run)
        self.version += 1

    def status(self) -> str:
        if self.error:
            return "failed"
        if not self.done:
            return "stopping" if self.control.should_stop else "running"
        return self.run.status if self.run is not None else "done"


def start(kind: str, work: Callable[[Job], Any]) -> Job:
    """Run ``work(job)`` in a daemon thread and register the job."""
    job = Job(id=f"{kind}-{next(_IDS)}", kind=kind)

    def target() -> None:
        try:
            job.result = work(job)
        except Exception as exc:  # noqa: BLE001 - shown in the page; the server keeps serving
            job.error = f"{type(exc).__name__}: {exc}"
            job.trace = traceback.format_exc()
        finally:
            job.done = True
            job.version += 1

    job.thread = threading.Thread(target=target, name=job.id, daemon=True)
    with _LOCK:
        _JOBS[job.id] = job
        _forget_old()
    job.thread.start()
    return job


def get(job_id: str | None) -> Job | None:
    with _LOCK:
        return _JOBS.get(job_id) if job_id else None


def stop(job_id: str | None) -> None:
    job = get(job_id)
    if job is not None:
        job.control.stop()


def _forget_old() -> None:
    finished = [j for j in _JOBS.values() if j.done]
    for j in sorted(finished, key=lambda j: j.started)[:-MAX_FINISHED]:
        del _JOBS[j.id]
