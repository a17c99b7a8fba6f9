"""Which probes run at a probe step: a cadence by cost, so that probes stay a small share of training time.

A fixed cadence (every ``every`` steps) costs nothing to think about and everything at real sizes: at hidden size
2048 one call of the default probes costs about 9 training steps on the CPU (the frequency maps of ΔW ~6, the
gradient probe's extra backward ~2.5, the spectra ~1; ``bench/probe_cost.py``), 90% of training at every 10
steps. :class:`ProbeSchedule` keeps one account for the run:

    credit = budget · (training seconds so far) − (seconds spent in probes so far)

At each step of the cadence a probe runs when its *expected cost* (its last measured cost) fits in the credit, or
when one call costs under ``free_seconds`` (a probe that fast is imperceptible, and on the small models of the
synthetic and digits tasks every probe is, so they keep the full cadence that the figures and the teaching rely on).
Probes are offered the credit least recently run first, so a cheap probe never starves an expensive one for long.

Two calls are always made, whatever they cost: the first probe step (it measures the costs, and the "before"
picture of PiSSA-like initialisations is not zero) and the last step (summaries and Inspect's default view read the
final state, and a spectrum taken earlier would be read as the final one). Both count against the credit: the
first call is paid back by training before any expensive probe runs again, and the last call's expected cost is
reserved as the run goes (a share step/total of it), so over a run the probes take at most ``budget`` of the
training time (plus free calls), unless the first and the last call alone cost more: then just those two run.
A probe that skipped steps says so: ``run.summary["probe_calls"]`` counts the calls of each probe and
``run.summary["probe_seconds"]`` their time.

``budget=None`` turns the account off: every probe at every step of the cadence, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from .base import Probe

#: one probe call under this many seconds runs at every step of the cadence, whatever the budget
FREE_SECONDS = 0.05


class ProbeSchedule:
    """The probes due at each probe step under a share ``budget`` of the training time (see the module docstring).

    :meth:`plan` picks the probes of one step before it runs (a gradient probe's ``before_step`` and its
    ``after_step`` belong to the same call), :meth:`timed` measures each phase of each call, :meth:`due` says
    whether a probe is in the current plan."""

    def __init__(self, probes: Sequence[Probe], budget: float | None, free_seconds: float = FREE_SECONDS,
                 sync: Callable[[], None] = lambda: None):
        self.probes, self.budget, self.free_seconds, self.sync = list(probes), budget, free_seconds, sync
        self.cost: dict[str, float | None] = {p.name: None for p in self.probes}  # last measured seconds per call
        self.last_step: dict[str, int] = {p.name: -1 for p in self.probes}
        self.calls: dict[str, int] = {p.name: 0 for p in self.probes}
        self.seconds: dict[str, float] = {p.name: 0.0 for p in self.probes}
        self.spent = 0.0
        self._plan: set[str] = set()
        self._current: dict[str, float] = {}

    def plan(self, step: int, train_seconds: float, total_steps: int) -> list[Probe]:
        """The probes that run at ``step`` (a step of the cadence) of a run of ``total_steps``, given the training
        seconds so far."""
        self._finish_call()
        final = step >= total_steps - 1
        if self.budget is None or final or all(c is None for c in self.cost.values()):
            chosen = list(self.probes)
        else:
            # the last call is made whatever it costs: reserve its expected cost, spread over the run
            reserve = sum(c or 0.0 for c in self.cost.values()) * step / max(1, total_steps - 1)
            credit = self.budget * train_seconds - self.spent - reserve
            chosen = []
            for p in sorted(self.probes, key=lambda q: self.last_step[q.name]):
                cost = self.cost[p.name]
                if cost is None or cost <= self.free_seconds or cost <= credit:
                    chosen.append(p)
                    credit -= cost or 0.0
        chosen.sort(key=self.probes.index)
        self._plan = {p.name for p in chosen}
        for p in chosen:
            self.last_step[p.name] = step
            self.calls[p.name] += 1
        self._current = {p.name: 0.0 for p in chosen}
        return chosen

    def due(self, probe: Probe) -> bool:
        return probe.name in self._plan

    def timed(self, probe: Probe):
        """A context that adds the seconds of one phase of ``probe``'s current call to its cost."""
        return _Clock(self, probe.name)

    def _finish_call(self) -> None:
        for name, seconds in self._current.items():
            self.cost[name] = seconds
        self._current = {}

    def summary(self) -> dict:
        """What the run records: calls and seconds per probe, and the budget the schedule kept."""
        self._finish_call()
        return {"probe_calls": dict(self.calls), "probe_seconds": round(sum(self.seconds.values()), 6),
                "probe_seconds_by_probe": {k: round(v, 6) for k, v in self.seconds.items()},
                "probe_budget": self.budget}


class _Clock:
    def __init__(self, schedule: ProbeSchedule, name: str):
        self.schedule, self.name = schedule, name

    def __enter__(self):
        self.schedule.sync()  # CUDA: time the probe's work, not the work queued before it
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.schedule.sync()
        seconds = time.perf_counter() - self.t0
        s = self.schedule
        s._current[self.name] = s._current.get(self.name, 0.0) + seconds
        s.seconds[self.name] += seconds
        s.spent += seconds
        return False
