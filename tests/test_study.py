"""The comparison as a study (issue 19): test splits, selection apart from reporting, diverged rates, intervals and
Welch marks against scipy, the two protocols, Pareto frontiers, concurrent store writers and a real Ray."""

from __future__ import annotations

import importlib.util
import math
import multiprocessing
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import workbench as wb
from workbench import figures as F
from workbench.compare import SelectionWarning
from workbench.runs import Run, RunStore
from workbench.study import export_csv, interval, run_study, summarize, welch_p
from workbench.tasks.synthetic import SyntheticTask


def _small(**kw) -> SyntheticTask:
    return wb.tasks.get("synthetic:lowrank", dim=16, rank=2, n_train=256, n_val=64, **kw)


# -- test splits --------------------------------------------------------------------------------------------------

def test_synthetic_test_split_is_fresh_draws_that_leave_train_and_val_unchanged():
    a, b = _small(), _small(n_test=32)
    for split in ("train", "val"):  # the test draws come after: adding them moved nothing
        assert torch.equal(a._x[split], b._x[split]) and torch.equal(a._y[split], b._y[split])
    x_test = torch.cat([batch["x"] for batch in b.batches("test", batch_size=10)])
    assert x_test.shape == (32, 16) and torch.equal(x_test, b._x["test"][:32])
    pool = torch.cat([b._x["train"], b._x["val"]])
    assert torch.cdist(x_test, pool).min() > 1e-3  # no test input is a training or validation input
    model = b.model()
    with torch.no_grad():  # the reported number, computed another way: MSE over the test targets' variance
        mse = torch.nn.functional.mse_loss(model(b._x["test"]), b._y["test"]).item()
    result = b.evaluate(model, split="test")
    assert result["rel_error"] == pytest.approx(mse / b._y["test"].var().item(), rel=1e-6)
    assert b.evaluate(model)["rel_error"] != result["rel_error"]  # val stays the default
    with pytest.raises(wb.ConfigError, match="split='train' is invalid"):
        b.evaluate(model, split="train")


def test_digits_test_split_is_a_fixed_disjoint_half_of_the_held_out_digits():
    from workbench.tasks import digits

    images, _ = digits._digits()
    train_idx, held = digits._split(len(images))
    val_idx, test_idx = digits._held_out(held)
    assert len(set(val_idx.tolist()) & set(test_idx.tolist())) == 0
    assert sorted([*val_idx.tolist(), *test_idx.tolist()]) == sorted(held.tolist())  # nothing from training
    assert torch.equal(digits._held_out(held)[1], test_idx)  # fixed
    assert not torch.equal(digits._held_out(held, seed=1)[1], test_idx)  # a data seed draws another division
    task = wb.tasks.get("digits:rotate")
    x_test = torch.cat([b["images"] for b in task.batches("test", batch_size=64)])
    assert torch.equal(x_test, torch.rot90(images[test_idx], 1, dims=(1, 2)))
    assert wb.tasks.get("digits:rotate", seed=3).options() == {"seed": 3}


# -- selection apart from reporting --------------------------------------------------------------------------------

class GuardedTask(SyntheticTask):
    """A synthetic task whose test split raises while ``locked``: selection must never read it."""

    def __init__(self, **kw):
        super().__init__("lowrank", dim=16, rank=2, n_train=256, n_val=64, **kw)
        self.locked, self.test_reads = True, 0

    def batches(self, split="train", batch_size=32, seed=0):
        if split == "test" and self.locked:
            raise AssertionError("the test split was read during selection")
        return super().batches(split, batch_size, seed)

    def evaluate(self, model, max_batches=None, split="val"):
        if split == "test":
            if self.locked:
                raise AssertionError("the test split was read during selection")
            self.test_reads += 1
        return super().evaluate(model, max_batches, split)


def test_selection_never_reads_the_test_split():
    task = GuardedTask()
    chosen = {}

    def unlock(best_lr):
        chosen.update(best_lr)
        task.locked = False

    cmp = wb.compare(task, ["lora"], lrs=(1e-3, 3e-2), steps=12, seeds=(0, 1), probes=(), on_selected=unlock)
    assert chosen == cmp.best_lr and task.test_reads == 2  # one test score per reported run, none before
    assert set(cmp.table.split) == {"test"} and cmp.split == "test"
    sweep = cmp.sweep.set_index("lr")
    assert cmp.best_lr["lora"] == sweep.metric_value.idxmin()  # chosen on val
    run = cmp.runs[1]
    assert cmp.table.metric_value[1] == pytest.approx(task.evaluate(run.adaptation.model, split="test")["rel_error"])
    assert cmp.table.val_metric_value[1] == pytest.approx(run.summary["metric_value"])
    with pytest.raises(AssertionError, match="read during selection"):  # the guard is live: reporting reads it
        wb.compare(GuardedTask(), ["lora"], lr=1e-2, steps=4, probes=())


def test_a_diverged_rate_is_never_selected_nor_scored_as_trained():
    cmp = wb.compare(_small(), ["lora"], lrs=(0.3, 30), steps=20, seeds=(0,), probes=())
    sweep = cmp.sweep.set_index("lr")
    assert sweep.status[30.0] == "diverged" and sweep.status[0.3] == "completed"
    assert cmp.best_lr == {"lora": 0.3}
    # the diverged run was reset to its last good state: no metric, the restored state's value labelled apart
    assert math.isnan(sweep.metric_value[30.0]) and math.isfinite(sweep.last_good_value[30.0])
    assert sweep.last_good_step[30.0] == 0 and math.isnan(sweep.last_good_value[0.3])
    assert (cmp.table.lr == 0.3).all() and (cmp.table.status == "completed").all()


def test_a_variant_with_no_completed_rate_warns_and_keeps_a_row():
    with pytest.warns(SelectionWarning, match="every rate swept for lora .* ended diverged"):
        cmp = wb.compare(_small(), ["lora"], lrs=(30.0, 100.0), steps=8, probes=())
    assert math.isnan(cmp.best_lr["lora"]) and cmp.table.empty and set(cmp.sweep.status) == {"diverged"}
    summary = cmp.summary()  # not an empty frame: the variant is there, with no completed run
    assert list(summary.variant) == ["lora"] and summary.n[0] == 0 and math.isnan(summary.metric_value_mean[0])


# -- statistics against scipy on hand-made numbers ----------------------------------------------------------------

def _table(values: dict[str, list[float]], status: dict[str, list[str]] | None = None) -> pd.DataFrame:
    rows = [{"variant": v, "seed": i, "metric_value": x, "status": (status or {}).get(v, ["completed"] * 9)[i],
             "split": "test", "trainable_params": 100}
            for v, xs in values.items() for i, x in enumerate(xs)]
    return pd.DataFrame(rows)


def test_interval_and_indistinguishable_marks_match_scipy():
    values = {"a": [0.80, 0.82, 0.81], "b": [0.79, 0.83, 0.80, 0.82], "c": [0.60, 0.61, 0.62], "d": [0.9]}
    out = summarize(_table(values), higher_is_better=True, alpha=0.05).set_index("variant")
    for v in ("a", "b", "c"):
        x = np.array(values[v])
        assert out.n[v] == len(x)
        assert out.metric_value_std[v] == pytest.approx(np.std(x, ddof=1))  # sample std, ddof = 1
        lo, hi = scipy.stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy.stats.sem(x))
        assert (out.metric_value_ci_low[v], out.metric_value_ci_high[v]) == pytest.approx((lo, hi))
    # d has the best mean but one run: it is the best, its spread and interval are unknown, nothing is tested
    assert out.best["d"] and math.isnan(out.metric_value_std["d"]) and math.isnan(out.metric_value_ci_low["d"])
    assert out.indistinguishable["a"] is None and math.isnan(out.p_vs_best["a"])
    out = summarize(_table({k: v for k, v in values.items() if k != "d"}), higher_is_better=True).set_index("variant")
    assert out.best["a"] and out.indistinguishable["a"] and not out.best["b"]
    p_b = scipy.stats.ttest_ind(values["b"], values["a"], equal_var=False).pvalue
    p_c = scipy.stats.ttest_ind(values["c"], values["a"], equal_var=False).pvalue
    assert p_b >= 0.05 and out.p_vs_best["b"] == pytest.approx(p_b) and out.indistinguishable["b"] is True
    assert out.p_vs_best["c"] == pytest.approx(p_c) and out.indistinguishable["c"] is False and p_c < 0.05
    strict = summarize(_table(values), higher_is_better=False, alpha=0.05).set_index("variant")
    assert strict.best["c"]  # lower is better: c


def test_sample_std_uses_ddof_1_and_diverged_runs_do_not_count():
    assert interval([1.0, 2.0, 3.0])[1] == 1.0  # ddof = 0 would give 0.816
    assert math.isnan(interval([1.0])[1])  # one seed says nothing about the spread (ddof = 0 said 0.0)
    table = _table({"a": [1.0, 2.0, 3.0, 50.0]}, {"a": ["completed"] * 3 + ["diverged"]})
    row = summarize(table).iloc[0]
    assert (row.n, row.runs, row.metric_value_mean, row.metric_value_std) == (3, 4, 2.0, 1.0)
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0 and math.isnan(welch_p([1.0], [1.0, 2.0]))
    with pytest.raises(wb.ConfigError, match=r"alpha=1.5 is invalid; alpha must be a number in \(0, 1\)"):
        summarize(table, alpha=1.5)


# -- the two protocols --------------------------------------------------------------------------------------------

def test_study_runs_both_protocols_on_shared_runs():
    st = run_study(_small(), ["lora", "dora"], seeds=2, steps=10, lrs=(3e-3, 3e-2), probes=())
    s = st.summary
    assert list(zip(s.protocol, s.variant)) == [("shared", "lora"), ("shared", "dora"), ("tuned", "lora"),
                                                ("tuned", "dora")]
    tuned = st.rates[("tuned", None)]
    assert st.rates[("shared", None)] == {"lora": tuned["lora"], "dora": tuned["lora"]}  # the reference's rate
    assert set(st.table.split) == {"test"} and (s.n == 2).all() and "training seeds [0, 1]" in s.spread[0]
    # both protocols train through the same cache: the reference at its own rate is one set of runs
    t = st.table.set_index(["protocol", "variant", "seed"])
    assert t.run_id[("shared", "lora", 0)] == t.run_id[("tuned", "lora", 0)]
    assert st.table.run_id.nunique() < len(st.table)
    csv = export_csv(s)
    assert csv.startswith("# value: metric_value") and "# split: test" in csv and "protocol,variant,lr,n" in csv
    with pytest.raises(wb.ConfigError, match="protocols="):
        run_study(_small(), ["lora"], protocols=("peft",))


def test_a_data_seed_rebuilds_the_task_and_the_table_says_which_spread():
    cmp = wb.compare(_small(), ["lora"], lr=1e-2, steps=4, probes=(), data_seed=5)
    assert cmp.table.data_seed[0] == 5 and cmp.runs[0].config["task_options"]["seed"] == 5
    st = run_study(_small(), ["lora"], protocols=("tuned",), seeds=(0,), data_seeds=(1, 2), steps=4,
                   lrs=(1e-2,), probes=())
    assert list(st.table.data_seed) == [1, 2] and st.summary.n[0] == 2
    assert "data seeds [1, 2]" in st.summary.spread[0]


# -- Pareto views ---------------------------------------------------------------------------------------------------

def test_pareto_front_matches_a_brute_force_check():
    g = torch.Generator().manual_seed(0)
    cost, metric = torch.rand(30, generator=g).tolist(), torch.rand(30, generator=g).tolist()
    front = F.pareto_front(cost, metric, higher_is_better=True)
    for i in range(30):
        beaten = any(cost[j] <= cost[i] and metric[j] >= metric[i] and j != i for j in range(30))
        assert front[i] == (not beaten)
    assert F.pareto_front([1, 2, 3], [1.0, 2.0, 3.0], higher_is_better=False) == [True, False, False]
    assert F.pareto_front([1, 2, 3], [3.0, 2.0, 1.0], higher_is_better=False) == [True, True, True]
    assert F.pareto_front([1, 2, float("nan")], [1.0, 0.5, 0.0]) == [True, True, False]


def test_pareto_figures_draw_points_and_the_frontier_per_protocol():
    values = {"a": [0.1, 0.2], "b": [0.3, 0.35], "c": [0.05, 0.06]}
    table = _table(values).assign(seconds_per_step=0.01, peak_memory_mb=5.0)
    table.loc[table.variant == "c", "trainable_params"] = 1000
    summary = summarize(table.assign(protocol="tuned"), within="protocol")
    fig = F.pareto_params(summary)
    points, line = fig.data[0], fig.data[1]
    assert list(points.text) == ["a", "b", "c"] and points.error_y.array is not None
    assert list(line.x) == [100, 1000] and list(line.y) == pytest.approx([0.15, 0.055])  # a, then c; b dominated
    assert "on test" in fig.layout.title.text and "lower is better" in fig.layout.title.text
    assert F.pareto_time(table).data and F.pareto_memory(summary).layout.xaxis.title.text == "peak memory (MB)"
    assert F.caption("pareto_params")
    assert "no results" in F.pareto(pd.DataFrame()).layout.annotations[0].text


# -- concurrent writers to one store ------------------------------------------------------------------------------

def _write_runs(root: str, worker: int, barrier) -> None:
    store = RunStore(root)
    barrier.wait()  # every writer starts together, all with the same id
    run = Run(id="20261202-120000-synthetic-lora-0000", config={"task": "t", "variant": "lora", "worker": worker})
    store.begin(run)
    for step in range(50):
        store.append(run, [(step, "train", "", "loss", float(worker))])
    run.status = "completed"
    for step in range(50):
        run.log(step, "train", "", "loss", float(worker))
    store.save(run)


def test_concurrent_writers_to_one_store_never_share_a_run(tmp_path):
    ctx = multiprocessing.get_context("fork")  # a copy of this process: no second import of torch per writer
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_write_runs, args=(str(tmp_path), w, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    store = RunStore(tmp_path)
    listed = store.list()
    assert len(listed) == 4 and set(listed.status) == {"completed"} and not listed.problem.any()
    workers = set()
    for run_id in listed.id:
        run = store.load(run_id)
        values = set(run.metrics.value)
        assert len(values) == 1 and len(run.metrics) == 50  # one writer's rows, all of them, no one else's
        assert run.config["worker"] == values.pop()
        workers.add(run.config["worker"])
    assert workers == {0, 1, 2, 3}


# -- a real Ray ---------------------------------------------------------------------------------------------------

def _ray_sessions() -> set[str]:
    return {p.name for p in (Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray").glob("session_2*")}


def _stop_ray_children(sessions: set[str]) -> None:
    """Kill the Ray processes a failed ``ray.init`` of this test left: this process's descendants whose command
    names Ray, and any process naming one of ``sessions`` (the session folders it created: a crashed raylet's
    agents are orphans by then). All are stopped first, so none spawns more, then killed."""
    import psutil

    def ours():
        found = []
        for p in psutil.process_iter():
            try:
                cmd = " ".join(p.cmdline())
                mine = p in descendants and "ray" in cmd.lower()
                if mine or any(name in cmd for name in sessions):
                    found.append(p)
            except psutil.Error:  # gone already, or a zombie
                continue
        return found

    descendants = set(psutil.Process().children(recursive=True))
    for p in ours():
        try:
            p.suspend()
        except psutil.Error:
            continue
    descendants = set(psutil.Process().children(recursive=True))
    procs = ours()
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(procs, timeout=10)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (the 'scale' extra)")
def test_ray_executor_on_a_real_local_ray_equals_the_local_executor(tmp_path, monkeypatch):
    import ray

    # a loaded machine (two cores, two pytest workers) starts Ray's agents slowly: they missed the 30 s wait here
    monkeypatch.setenv("RAY_agent_register_timeout_ms", "300000")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster: no token written to ~/.ray

    task = _small()
    kw = dict(lrs=(1e-2, 3e-2), steps=10, seeds=(0, 1), probes=())
    local = wb.compare(task, ["lora", "dora"], **kw)
    started = not ray.is_initialized()
    if started:
        for attempt in range(2):  # Ray's node has a fixed 30 s to start: a busy moment gets one more try
            before = _ray_sessions()
            try:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                break
            except Exception as exc:
                # a half-started node keeps its processes, and pytest waits for them at exit
                _stop_ray_children(_ray_sessions() - before)
                if attempt or "timed out during startup" not in str(exc):
                    raise  # never a skip: the real executor must run where ray is installed (CI installs it)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            remote = wb.compare(task, ["lora", "dora"], executor="ray", store=tmp_path, **kw)
    finally:
        if started:
            ray.shutdown()
    assert remote.best_lr == local.best_lr
    cols = ["variant", "seed", "lr", "status", "split"]
    assert remote.table[cols].equals(local.table[cols])
    for col in ("metric_value", "val_metric_value", "final_loss"):  # the same seeds give the same numbers
        assert remote.table[col].tolist() == pytest.approx(local.table[col].tolist(), rel=1e-5), col
    assert set(remote.table.split) == {"test"}
    listed = RunStore(tmp_path).list()
    assert len(listed) == 2 * 2 + 2 and set(listed.status) == {"completed"}  # every run landed in the store
    saved = RunStore(tmp_path).load(remote.runs[1].id)
    assert saved.summary["test_metric_value"] == pytest.approx(remote.table.metric_value[1])
