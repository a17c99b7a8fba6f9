"""The probes' cadence by cost (workbench.probes.schedule): the budget holds, the first and last calls are made,
cheap probes keep the full cadence, and ``probe_budget=None`` is the fixed cadence."""

from __future__ import annotations

import time

import pytest

import workbench as wb
from workbench.probes import Probe, ProbeResult
from workbench.probes.schedule import FREE_SECONDS, ProbeSchedule


class Fake(Probe):
    def __init__(self, name: str):
        self.name = name


def simulate(costs: dict[str, float], budget, *, steps: int = 1000, every: int = 10, step_seconds: float = 0.1):
    """Drive a schedule as train() does, with each call of a probe costing ``costs[name]`` seconds (a fake clock)."""
    probes = [Fake(n) for n in costs]
    sched = ProbeSchedule(probes, budget)
    ran: dict[str, list[int]] = {n: [] for n in costs}
    for step in range(0, steps):
        if step % every == 0 or step == steps - 1:
            for p in sched.plan(step, step * step_seconds, steps):
                ran[p.name].append(step)
                sched._current[p.name] = costs[p.name]
                sched.seconds[p.name] += costs[p.name]
                sched.spent += costs[p.name]
    sched._finish_call()
    return sched, ran, steps * step_seconds


def test_the_budget_holds_and_the_first_and_last_calls_are_made():
    sched, ran, train = simulate({"cheap": 0.001, "big": 0.2}, budget=0.05)
    assert ran["cheap"] == [*range(0, 1000, 10), 999]              # under FREE_SECONDS: every step of the cadence
    assert ran["big"][0] == 0 and ran["big"][-1] == 999
    assert 2 < len(ran["big"]) < len(ran["cheap"])                  # thinned out, not dropped
    assert sched.spent <= 0.05 * train + 1e-9                       # the last call's cost was reserved


def test_a_schedule_without_budget_runs_every_probe_at_every_step_of_the_cadence():
    _, ran, _ = simulate({"cheap": 0.001, "big": 0.2}, budget=None)
    assert ran["big"] == ran["cheap"] == [*range(0, 1000, 10), 999]


def test_when_the_first_and_last_calls_alone_exceed_the_budget_only_they_run():
    sched, ran, train = simulate({"big": 5.0}, budget=0.05, steps=100)
    assert ran["big"] == [0, 99]
    assert sched.spent == pytest.approx(10.0)


def test_expensive_probes_share_the_credit_least_recently_run_first():
    _, ran, _ = simulate({"a": 0.3, "b": 0.3}, budget=0.05)
    assert abs(len(ran["a"]) - len(ran["b"])) <= 1


class Slow(Probe):
    """A probe that costs a known time per call: the loop's schedule must thin it out."""
    name = "slow"

    def after_step(self, ctx):
        time.sleep(4 * FREE_SECONDS)
        out = ProbeResult()
        out.add("", "called", 1.0)
        return out


def test_train_records_the_calls_and_keeps_a_slow_probe_within_its_budget(monkeypatch):
    from workbench import probes as probes_module

    monkeypatch.setitem(probes_module.PROBES, "slow", Slow)
    run = wb.train("synthetic:lowrank", "lora", steps=60, every=5, probes=["ranks", "slow"], progress=False)
    calls = run.summary["probe_calls"]
    assert calls["ranks"] == len(range(0, 60, 5)) + 1               # cheap: the full cadence (0, 5, ..., 55, 59)
    slow_steps = sorted(run.metrics[run.metrics.probe == "slow"].step.unique())
    assert slow_steps == [0, 59] and calls["slow"] == 2             # training here is ms: only first and last
    assert run.summary["probe_seconds_by_probe"]["slow"] >= 2 * 4 * FREE_SECONDS * 0.9
    fixed = wb.train("synthetic:lowrank", "lora", steps=20, every=5, probes=["slow"], probe_budget=None,
                     progress=False)
    assert fixed.summary["probe_calls"]["slow"] == 5                # 0, 5, 10, 15, 19


def test_probe_budget_is_validated():
    with pytest.raises(wb.ConfigError, match="probe_budget"):
        wb.train("synthetic:lowrank", "lora", steps=2, probe_budget=2.0, progress=False)
