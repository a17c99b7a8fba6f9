"""A soak test of the dashboard (issue 16, evidence): four clients, each its own browser session, drive the app on a
free loopback port over HTTP (the queue protocol the page speaks) through many short synthetic runs with random
stops and deletes, some of them while the run still trains. At the end every finished run in the store must load,
no job may be left unfinished or orphaned, and the server's memory must be back within 10% of where it stood after
a warm-up round."""

from __future__ import annotations

import gc
import os
import random
import threading
import time

import pytest
from test_fuzz import Page, endpoints, free_port, settle

from workbench.runs import RunStore

CLIENTS = 4
RUNS_PER_CLIENT = int(os.environ.get("SOAK_RUNS", 12))
WARM_UP = int(os.environ.get("SOAK_WARM_UP", 2))  # runs per client before memory is measured
VARIANTS = ["lora", "dora", "vera", "fourierft", "pissa"]
TASK = "synthetic:lowrank"


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def fn_index(demo, name: str) -> int:
    """The index of the event handler whose callback (under the app's wrappers) is called ``name``."""
    for index, fn in demo.fns.items():
        f, seen = fn.fn, 0
        while f is not None and seen < 6:
            if getattr(f, "__name__", "") == name:
                return index
            inner = None
            for cell in getattr(f, "__closure__", None) or ():
                try:
                    value = cell.cell_contents
                except ValueError:
                    continue
                if callable(value) and hasattr(value, "__name__") and not isinstance(value, type):
                    inner = value
                    break
            f, seen = inner, seen + 1
    raise LookupError(name)


def set_row(table: dict, name: str, value) -> dict:
    rows = [list(r) for r in table["data"]]
    for r in rows:
        if r[0] == name:
            r[1] = value
    return {**table, "data": rows}


class Client:
    def __init__(self, demo, base: str, seed: int):
        self.page, self.rng = Page(base), random.Random(seed)
        self.forms, self.start = fn_index(demo, "train_forms"), fn_index(demo, "start_training")
        self.stop, self.delete = fn_index(demo, "stop_job"), fn_index(demo, "delete")
        self.options = fn_index(demo, "task_options_form")
        self.options_table = next(e for e in endpoints(demo) if e["index"] == self.options)["inputs"][1]["default"]
        self.recipe_table = next(e for e in endpoints(demo) if e["index"] == self.start)["inputs"][6]["default"]
        self.messages: list[str] = []
        self.count = seed
        self.errors: list[str] = []

    def jobs(self) -> list:
        """Every job of this client's session, finished or not (read in-process: the job id lives in the page's
        server-side state)."""
        from workbench.dashboard import jobs

        with jobs._LOCK:
            return [j for j in jobs._JOBS.values() if j.owner == self.page.session]

    def one_run(self) -> None:
        variant = VARIANTS[self.count % len(VARIANTS)]  # every variant early (the warm-up meets them all)
        self.count += 1
        forms = self.page.call(self.forms, [TASK, variant])
        assert forms.success, forms.error
        settings, config = forms.outputs[0], forms.outputs[1]
        settings = set_row(set_row(settings, "steps", str(self.rng.randint(10, 40))), "every", "5")
        opts = self.page.call(self.options, [TASK, self.options_table]).outputs[0]
        before = {j.id for j in self.jobs()}
        started = self.page.call(self.start, [TASK, variant, settings, config, None, opts, self.recipe_table])
        if not started.success:
            self.errors.append(f"start: {started.error}")
            return
        self.messages += started.messages
        new = [j for j in self.jobs() if j.id not in before]
        if not new:
            self.errors.append(f"no job started: {started.messages}")
            return
        job = new[0]
        action = self.rng.random()
        if action < 0.3:  # stop it soon
            time.sleep(self.rng.uniform(0, 0.3))
            self.page.call(self.stop, [None])
        elif action < 0.45:  # try to delete it while it trains (refused while it runs)
            time.sleep(self.rng.uniform(0, 0.2))
            if job.run is not None:
                self.messages += self.page.call(self.delete, [None, job.run.id]).messages
        deadline = time.time() + 60
        while not job.done and time.time() < deadline:
            time.sleep(0.05)
        if not job.done:
            self.errors.append(f"job {job.id} did not finish")
            return
        if job.run is not None and self.rng.random() < 0.3:  # delete a finished run
            answer = self.page.call(self.delete, [None, job.run.id])
            if not answer.success:
                self.errors.append(f"delete: {answer.error}")


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    """One soak of the dashboard: the store, the clients and the server's RSS after the warm-up and each round."""
    from workbench.dashboard import app as dashboard_app

    root = tmp_path_factory.mktemp("soak-runs")
    t0 = time.time()
    port = free_port()
    demo = dashboard_app.build_app(str(root))
    dashboard_app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    base = f"http://127.0.0.1:{port}/gradio_api"
    try:
        clients = [Client(demo, base, seed) for seed in range(CLIENTS)]

        def round_(n: int) -> None:
            threads = [threading.Thread(target=lambda c=c: [c.one_run() for _ in range(n)]) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)

        round_(WARM_UP)  # warm-up: every variant's code paths, the task cache, Gradio's own buffers
        gc.collect()
        trace = [rss_bytes()]
        for _ in range((RUNS_PER_CLIENT - WARM_UP) // 2):
            round_(2)
            gc.collect()
            trace.append(rss_bytes())
        listed = RunStore(root).list()
        print(f"soak: {CLIENTS} clients x {RUNS_PER_CLIENT} runs, {sum(len(c.jobs()) for c in clients)} jobs kept, "
              f"{len(listed)} runs in the store, RSS {trace[0] / 2**20:.0f} -> {trace[-1] / 2**20:.0f} MiB "
              f"({(trace[-1] / trace[0] - 1) * 100:+.1f}%; by round {[round(r / 2**20) for r in trace]} MiB), "
              f"{time.time() - t0:.0f} s")
        yield root, clients, trace
    finally:
        demo.close()
        settle()


@pytest.mark.slow
def test_soak_every_finished_run_loads_and_no_job_is_left(soak):
    from workbench.dashboard import jobs

    root, clients, _ = soak
    errors = [e for c in clients for e in c.errors]
    assert not errors, errors
    unfinished = [j.id for c in clients for j in c.jobs() if not j.done]
    assert not unfinished and not jobs.running_run_ids()
    store = RunStore(root)
    listed = store.list()
    assert len(listed) > 0 and "running" not in set(listed.status) and "unreadable" not in set(listed.status)
    for run_id in listed.id:  # every finished run loads, with its adapter where it has one
        run = store.load(run_id)
        if (root / run_id / "adapter").exists():
            run.restore()


@pytest.mark.slow
def test_soak_memory_comes_back_within_ten_percent(soak):
    _, _, trace = soak
    assert trace[-1] <= 1.10 * trace[0], [round(r / 2**20) for r in trace]
