"""Background jobs: each training or comparison runs in its own thread, registered under a job id.

The page keeps only the job id (a ``gr.State`` must be deep-copyable, a thread is not) and polls with a
``gr.Timer``. A job never raises into the server: an exception is stored on the job and shown in the page.

Limits (issue 16): a job has an ``owner`` (the browser session) and a ``kind`` (demo, train, compare); an owner has
at most one unfinished job of each kind (:func:`start` refuses a second with a ConfigError naming the running one:
refusing keeps the first run's work, where stopping it silently would throw it away), and :func:`stop` reaches every
unfinished job of the owner and kind. At most ``WORKBENCH_MAX_JOBS`` jobs (default: the number of cores) train at
once in the process; the others wait in a first-come queue, shown as ``queued``, and can be stopped while waiting.

Long jobs (issue 17): a job says what it is doing (:meth:`Job.set_phase`: "building the task: loading the model and
tokenising the data"), measures its pace (:meth:`Job.eta_seconds`, from the steps its runs have logged) and can be
stopped between any two pieces of work: ``work`` calls :meth:`Job.check_stop` (or a callback of the job does) and a
:class:`JobStopped` raised there ends the job as ``stopped``, with the time from the press of Stop to the end kept
in :attr:`Job.stop_latency`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..events import Progress, Start, TrainControl, TrainEvent
from ..runs import HEARTBEAT

_LOCK = threading.Lock()
_JOBS: dict[str, Job] = {}
_IDS = itertools.count(1)
MAX_FINISHED = 64  # finished jobs kept for their pages; older ones are forgotten (their runs are on disk)
MAX_JOBS_ENV = "WORKBENCH_MAX_JOBS"


def max_running() -> int:
    """How many jobs may train at once in this process: ``$WORKBENCH_MAX_JOBS`` or the number of cores."""
    text = os.environ.get(MAX_JOBS_ENV, "").strip()
    if text:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"{MAX_JOBS_ENV}={text!r} is invalid; give a whole number of at least 1")
        return n
    return os.cpu_count() or 1


_SLOTS_LOCK = threading.Condition()
_RUNNING: list[str] = []   # ids of jobs holding a slot
_WAITING: list[str] = []   # ids of jobs queued for one, first come first served


class JobStopped(Exception):
    """Raised inside a job's work when Stop was pressed: the job ends ``stopped`` (not failed)."""


@dataclass
class Job:
    id: str
    kind: str
    owner: str | None = None                       # the session that started it (None: no session, e.g. tests)
    control: TrainControl = field(default_factory=TrainControl)  # Stop asks every run of the job to end
    runs: list = field(default_factory=list)       # live Run objects, in order of start
    result: Any = None
    error: str | None = None
    done: bool = False
    started: float = field(default_factory=time.time)
    version: int = 0                               # bumped on every event: pollers redraw only on change
    thread: threading.Thread | None = None
    queued: bool = True                            # waiting for a slot (WORKBENCH_MAX_JOBS)
    phase: str = ""                                # what the job is doing now, for the status line ("" : training)
    progress: float | None = None                  # fraction done, for work that is not a training (a landscape)
    progress_since: float | None = None            # time.perf_counter() when that work began (its ETA)
    planned_steps: int | None = None               # training steps the whole job will take (a comparison's runs)
    stop_requested: float | None = None            # time.time() of the first press of Stop
    ended: float | None = None                     # time.time() when the work returned or raised
    stopped: bool = False                          # ended by Stop (JobStopped, or its runs ended "stopped")
    #: (time.perf_counter(), training steps done by all the job's runs) at each progress event: the pace for the ETA
    pace: list = field(default_factory=list)

    @property
    def run(self):
        return self.runs[-1] if self.runs else None

    def on_event(self, event: TrainEvent) -> None:
        """``train()`` callback: remember the runs, the pace, and count changes (pollers redraw on a new version).
        A run that starts after Stop was pressed (the next run of a comparison) is stopped before its first step."""
        if isinstance(event, Start):
            if self.control.should_stop:
                _discard_unstarted(event.run)
                raise JobStopped
            self.runs.append(event.run)
            self.phase = ""
        elif isinstance(event, Progress):
            self.pace.append((time.perf_counter(), self.steps_done()))
            del self.pace[:-50]  # the recent pace: a sweep's runs differ in speed only by chance
        self.version += 1

    def set_phase(self, text: str) -> None:
        """Say what the job is doing (shown in the page) and end it here if Stop was pressed."""
        self.check_stop()
        self.phase = text
        self.version += 1

    def check_stop(self) -> None:
        if self.control.should_stop:
            raise JobStopped

    def request_stop(self) -> None:
        if self.stop_requested is None:
            self.stop_requested = time.time()
        self.control.stop()
        self.version += 1

    @property
    def stop_latency(self) -> float | None:
        """Seconds from the press of Stop to the end of the job (None: not stopped, or still stopping)."""
        if self.stop_requested is None or self.ended is None:
            return None
        return max(self.ended - self.stop_requested, 0.0)

    def steps_done(self) -> int:
        """Training steps logged by all of the job's runs (the last logged train step + 1 of each)."""
        total = 0
        for run in list(self.runs):
            rows = run._rows
            last = next((r[0] for r in reversed(rows) if r[1] == "train" and r[3] == "loss"), None)
            total += 0 if last is None else int(last) + 1
        return total

    def eta_seconds(self) -> float | None:
        """Seconds left at the recent pace (None until two progress events have been seen, or without a plan):
        training steps left over steps per second, measured over the last progress events."""
        total = self.planned_steps
        if total is None and self.run is not None:
            total = self.run.config.get("steps")
        if not total or len(self.pace) < 2 or self.done:
            return None
        (t0, s0), (t1, s1) = self.pace[0], self.pace[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        return max(total - self.steps_done(), 0) * (t1 - t0) / (s1 - s0)

    def status(self) -> str:
        if self.error:
            return "failed"
        if not self.done:
            if self.control.should_stop:
                return "stopping"
            return "queued" if self.queued else "running"
        if self.stopped:
            return "stopped"
        return self.run.status if self.run is not None else "done"


def start(kind: str, work: Callable[[Job], Any], owner: str | None = None) -> Job:
    """Run ``work(job)`` in a daemon thread once a slot is free, and register the job. A session (``owner``) with
    an unfinished job of this kind is refused with a ConfigError naming it."""
    with _LOCK:
        if owner is not None:
            busy = [j for j in _JOBS.values() if j.owner == owner and j.kind == kind and not j.done]
            if busy:
                raise ConfigError(f"job {busy[0].id} ({_describe(busy[0])}) is still {busy[0].status()}; press "
                                  f"Stop and wait for it to end before starting another {kind}")
        job = Job(id=f"{kind}-{next(_IDS)}", kind=kind, owner=owner)
        _JOBS[job.id] = job
        _forget_old(job)

    def target() -> None:
        try:
            if _acquire_slot(job):
                job.result = work(job)
            else:
                job.stopped = True  # stopped while it waited in the queue
        except JobStopped:
            job.stopped = True
        except Exception as exc:  # noqa: BLE001 - shown in the page; the server keeps serving
            if job.control.should_stop and isinstance(exc.__cause__ or exc.__context__, JobStopped):
                job.stopped = True  # a JobStopped that a library wrapped on its way out
            else:
                job.error = f"{type(exc).__name__}: {exc}"
                job.trace = traceback.format_exc()
        finally:
            _release_slot(job)
            _release_saved(job)
            job.stopped = job.stopped or (job.control.should_stop and job.error is None)
            job.phase = ""
            job.ended = time.time()
            job.done = True
            job.version += 1

    job.thread = threading.Thread(target=target, name=job.id, daemon=True)
    job.thread.start()
    return job


def _release_saved(job: Job) -> None:
    """Let go of the live adaptation (the adapted model and its adapter) of each of a finished job's runs that is
    saved with its adapter: the job's pages no longer train it, and a view that needs it (the magnitudes) restores
    it from the store (``figures._adaptation_of``). Metrics and snapshots stay, for the live plots. Without this
    every finished job kept a model in memory until it was forgotten (the soak: ~1.2 MiB per short run)."""
    for run in list(job.runs):
        path = getattr(run, "path", None)
        if (getattr(run, "adaptation", None) is not None and run.status != "running" and path is not None
                and (Path(path) / "adapter").is_dir()):
            run.adaptation = None


def _discard_unstarted(run) -> None:
    """Remove the folder of a run that was begun in a store but stopped before its first step (the next run of a
    comparison after Stop): it holds no metric, only what ``RunStore.begin`` wrote. Anything more is left alone."""
    path = getattr(run, "path", None)
    if path is None or not Path(path).is_dir() or Path(path).is_symlink():
        return
    folder = Path(path)
    names = {p.name for p in folder.iterdir()}
    metrics = folder / "metrics.jsonl"
    if names <= {"run.json", "metrics.jsonl", HEARTBEAT} and (not metrics.exists() or metrics.stat().st_size == 0):
        shutil.rmtree(folder, ignore_errors=True)


def _describe(job: Job) -> str:
    run = job.run
    return f"run {run.id}" if run is not None else "starting" if not job.queued else "queued"


def _acquire_slot(job: Job) -> bool:
    """Wait for a free slot, first come first served; False if the job was stopped while it waited."""
    with _SLOTS_LOCK:
        _WAITING.append(job.id)
        try:
            while not (len(_RUNNING) < max_running() and _WAITING[0] == job.id):
                if job.control.should_stop:
                    return False
                _SLOTS_LOCK.wait(timeout=0.2)
            _RUNNING.append(job.id)
        finally:
            _WAITING.remove(job.id)
            _SLOTS_LOCK.notify_all()
    job.queued = False
    job.version += 1
    return True


def _release_slot(job: Job) -> None:
    with _SLOTS_LOCK:
        if job.id in _RUNNING:
            _RUNNING.remove(job.id)
        _SLOTS_LOCK.notify_all()


def queue_position(job: Job) -> int | None:
    """1 for the next job to start, None when the job is not waiting."""
    with _SLOTS_LOCK:
        return _WAITING.index(job.id) + 1 if job.id in _WAITING else None


def owned(owner: str | None, kind: str | None = None) -> list[Job]:
    """The unfinished jobs of a session (of one kind, or all)."""
    with _LOCK:
        return [j for j in _JOBS.values()
                if owner is not None and j.owner == owner and (kind is None or j.kind == kind) and not j.done]


def running_run_ids() -> set[str]:
    """Ids of the runs that unfinished jobs of this process are training (delete refuses them)."""
    with _LOCK:
        return {r.id for j in _JOBS.values() if not j.done for r in list(j.runs) if r.status == "running"}


def get(job_id: str | None) -> Job | None:
    with _LOCK:
        return _JOBS.get(job_id) if job_id else None


def stop(job_id: str | None, owner: str | None = None) -> list[Job]:
    """Stop the job ``job_id`` and every other unfinished job of the same kind that ``owner`` started (so a job the
    page lost track of can still be stopped); returns the jobs asked to stop."""
    job = get(job_id)
    targets = [job] if job is not None else []
    kinds = {job.kind} if job is not None else {None}
    for kind in kinds:
        targets += [j for j in owned(owner, kind) if j not in targets]
    for j in targets:
        j.request_stop()
    return targets


def _forget_old(new: Job | None = None) -> None:
    """Forget finished jobs no page can show any more: those of ``new``'s session and kind (a session's page holds
    one job id per kind, now ``new``'s), then all but the newest :data:`MAX_FINISHED`. Their runs stay on disk.
    Each kept job holds its runs' metrics and snapshots (about 0.6 MiB for a short synthetic run), so without the
    first rule a session's every run stayed in memory until 64 jobs had ended (issue 16, the soak)."""
    if new is not None and new.owner is not None:
        for j in [j for j in _JOBS.values() if j.done and j.owner == new.owner and j.kind == new.kind]:
            del _JOBS[j.id]
    finished = [j for j in _JOBS.values() if j.done]
    for j in sorted(finished, key=lambda j: j.started)[:-MAX_FINISHED]:
        del _JOBS[j.id]
