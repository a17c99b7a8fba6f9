"""Long jobs in the dashboard (issue 17 item 11; issue 16 item 3's dashboard part): tasks are built inside the job,
never in the request, with a status line saying so; an ETA while training; Stop ends a Train, Compare or Landscape
job within a second (measured); Compare and Landscape estimate their cost and ask above a threshold. And the
Compare tab (item 10): runs grouped by variant, labelled ``lr=…, seed=…``, the sweep apart, the metric's own name,
a budget field, CSV export; Train's module picker for the spectrum (item 9)."""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict

import pandas as pd
import pytest

import workbench as wb
from workbench.budget import count_params
from workbench.dashboard import app as dashboard_app
from workbench.dashboard import callbacks as cb
from workbench.dashboard import jobs
from workbench.runs import RunStore

TASK = "synthetic:lowrank"


def wait(job_id: str, timeout: float = 60, until=lambda job: job.done) -> jobs.Job:
    job = jobs.get(job_id)
    deadline = time.time() + timeout
    while not until(job) and time.time() < deadline:
        time.sleep(0.01)
    assert until(job), f"job {job_id} did not get there in {timeout} s: {cb.job_status(job_id)}"
    return job


def start(root, settings: dict | None = None, config: dict | None = None, task: str = TASK, variant: str = "lora",
          owner: str | None = None) -> str:
    shown_settings, shown_config, _ = cb.train_forms(task, variant)
    for table, values in ((shown_settings, settings or {}), (shown_config, config or {})):
        for field, value in values.items():
            table.loc[table.field == field, "value"] = str(value)
    return cb.start_training(task, variant, shown_settings, shown_config, str(root), None, owner=owner)


@pytest.fixture(autouse=True)
def no_measured_pace(monkeypatch):
    """Each test starts with no pace measured by earlier jobs (it decides whether a job asks for confirmation)."""
    monkeypatch.setattr(cb, "_PACE", {})


def _steps_logged(job: jobs.Job) -> bool:
    return job.run is not None and job.steps_done() > 0


def _stop_and_time(job_id: str) -> float:
    t0 = time.perf_counter()
    jobs.stop(job_id)
    wait(job_id, timeout=30)
    return time.perf_counter() - t0


# -- A: the task is built in the job, not in the request -------------------------------------------------------

def test_the_request_returns_at_once_and_the_job_builds_the_task_saying_so(tmp_path, monkeypatch):
    built_in, release = [], threading.Event()
    real_get = cb.tasks.get

    def slow_get(name, **options):  # a task that takes a while to build (a text task tokenising its data set)
        built_in.append(threading.current_thread().name)
        release.wait(10)
        return real_get(name, **options)

    monkeypatch.setattr(cb, "_TASKS", OrderedDict())
    monkeypatch.setattr(cb.tasks, "get", slow_get)
    t0 = time.perf_counter()
    job_id = start(tmp_path, settings={"steps": 20})
    returned = time.perf_counter() - t0
    job = wait(job_id, until=lambda j: bool(built_in))
    status = cb.job_status(job_id)
    release.set()
    wait(job_id)
    print(f"\nstart_training returned in {1000 * returned:.1f} ms while the task was still being built")
    assert returned < 0.5 and built_in == [job_id], "the task was built in the request handler"
    assert "building the task" in status and TASK in status
    assert job.run.status == "completed"


def test_oversized_task_options_are_refused_in_the_request_without_building(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MEMORY_LIMIT", "64MiB")
    monkeypatch.setattr(cb.tasks, "get", lambda *a, **k: pytest.fail("the request built the task"))
    form = cb.task_options_form(TASK)
    form.loc[form.field == "n_train", "value"] = "400000"
    settings, config, _ = cb.train_forms(TASK, "lora")
    with pytest.raises(wb.ConfigError, match=r"synthetic:lowrank: n_train=400000 needs about .* more than the"):
        cb.start_training(TASK, "lora", settings, config, str(tmp_path), form)
    with pytest.raises(wb.ConfigError, match=r"synthetic:lowrank: n_train=400000 needs about"):
        cb.start_comparison(TASK, ["lora"], "0", "10", "0.01", str(tmp_path), form)


# -- B: ETA and Stop within a second ------------------------------------------------------------------------------

def test_training_shows_an_eta_and_stops_within_a_second(tmp_path):
    job_id = start(tmp_path, settings={"steps": 100000, "every": 10})
    job = wait(job_id, until=lambda j: j.eta_seconds() is not None)
    status = cb.job_status(job_id)
    assert "left (" in status and "ms/step" in status, status
    eta = job.eta_seconds()
    seconds = _stop_and_time(job_id)
    print(f"\ntrain: ETA {eta:.0f} s shown; stopped {seconds * 1000:.0f} ms after Stop "
          f"(job.stop_latency {job.stop_latency * 1000:.0f} ms)")
    assert job.run.status == "stopped" and "stopped" in cb.job_status(job_id)
    assert seconds < 1.0 and job.stop_latency < 1.0


def test_compare_stops_within_a_second_and_starts_no_further_run(tmp_path):
    job_id = cb.start_comparison(TASK, ["lora", "dora", "full"], "0, 1, 2", "100000", "sweep", str(tmp_path),
                                 confirm=True)
    job = wait(job_id, until=_steps_logged)
    seconds = _stop_and_time(job_id)
    print(f"\ncompare: stopped {seconds * 1000:.0f} ms after Stop, {len(job.runs)} of 15 planned runs started")
    assert seconds < 1.0 and job.stop_latency < 1.0
    assert job.status() == "stopped" and "stopped" in cb.comparison_status(job_id)
    assert len(job.runs) == 1 and job.runs[0].status == "stopped"
    # the runs after Stop were neither trained nor left behind as empty folders
    assert list(RunStore(tmp_path).list().id) == [job.runs[0].id]


def _saved_run(root, steps: int = 30) -> str:
    return wb.train(cb.get_task(TASK), "lora", settings={"steps": steps, "every": 10}, store=RunStore(root),
                    progress=False).id


def test_landscape_is_a_job_with_progress_and_a_stop_within_a_second(tmp_path):
    root = str(tmp_path)
    run_id = _saved_run(root)
    job_id = cb.start_landscape(root, run_id, "delta", "2", "51", "1.0", confirm=True)
    job = wait(job_id, until=lambda j: (j.progress or 0) > 0.01)
    status = cb.landscape_status(job_id)
    assert "% · about" in status and "left" in status, status
    seconds = _stop_and_time(job_id)
    print(f"\nlandscape: stopped {seconds * 1000:.0f} ms after Stop at {100 * job.progress:.0f}% of a 51x51 grid")
    assert seconds < 1.0 and job.status() == "stopped"
    assert re.search(r"stopped\*\* at \d+% of the grid · stopped \d+ ms after Stop", cb.landscape_status(job_id))
    done = wait(cb.start_landscape(root, run_id, "delta", "1", "5", "0.5"))  # and one that runs to the end
    fig = cb.landscape_figure(done.id)
    assert done.error is None and len(fig.data) == 1 and "sharpness" in cb.landscape_status(done.id)


def test_compare_and_landscape_ask_before_a_long_job(tmp_path):
    root = str(tmp_path)
    before = len(jobs._JOBS)
    cb._PACE[TASK] = 0.01  # 10 ms a step, as measured by an earlier job
    with pytest.raises(cb.NeedsConfirmation, match=r"trains 8 runs, 16,000 training steps in all, about 2.7 min "
                                                   r".*Start anyway"):
        cb.start_comparison(TASK, ["lora", "dora"], "0, 1", "2000", "sweep", root)
    cb._PACE.clear()  # nothing measured: the step count decides
    with pytest.raises(cb.NeedsConfirmation, match="no pace known"):
        cb.start_comparison(TASK, ["lora", "dora"], "0, 1", "2000", "sweep", root)
    run_id = _saved_run(root)
    meta = tmp_path / run_id / "run.json"
    import json

    data = json.loads(meta.read_text())
    data["summary"]["seconds_per_step"] = 0.5  # a slow model: a 15x15 grid is minutes of work
    meta.write_text(json.dumps(data))
    cb._load_cached.cache_clear()
    with pytest.raises(cb.NeedsConfirmation, match=r"evaluates 226 points, about .* min .*Start anyway"):
        cb.start_landscape(root, run_id, "delta", "2", "15", "1.0")
    assert len(jobs._JOBS) == before  # asking started nothing
    assert cb.comparison_plan(TASK, ["lora"], [0], 50, False, root)["runs"] == 1  # a short job does not ask
    job = jobs.get(cb.start_landscape(root, run_id, "delta", "1", "3", "0.5", confirm=True))
    wait(job.id)
    assert job.error is None


# -- C: the Compare tab --------------------------------------------------------------------------------------------

def test_compare_groups_runs_by_variant_names_the_metric_and_exports_csv(tmp_path):
    job = wait(cb.start_comparison(TASK, ["lora", "full"], "0, 1", "20", "0.01", str(tmp_path)))
    summary, runs, sweep, loss, *_ = cb.comparison_view(job.id, "layers.0")
    assert list(runs.variant) == ["lora", "lora", "full", "full"]
    assert list(runs.setting) == ["lr=0.01, seed=0", "lr=0.01, seed=1"] * 2
    metric = "rel_error (lower is better)"
    assert metric in runs.columns and "metric_value" not in runs.columns
    assert list(summary.variant) == ["lora", "full"] and list(summary.runs) == [2, 2]
    lora = runs[runs.variant == "lora"][metric]
    assert summary[f"{metric} (mean ± sd)"].iloc[0] == f"{lora.mean():.4g} ± {lora.std(ddof=1):.2g}"  # sample sd
    assert sweep.empty
    # the Pareto view: one point per variant at its trainable parameters, its mean on the test split
    pareto = cb.comparison_pareto(job.id)
    (points,) = [t for t in pareto.data if t.mode == "markers+text"]
    table = job.result.summary()
    assert list(points.text) == ["lora", "full"] and "test" in pareto.layout.title.text
    assert list(points.x) == list(table.trainable_params_mean)
    assert list(points.y) == pytest.approx(list(table.metric_value_mean))
    assert not [t for t in cb.comparison_pareto(None).data if t.mode == "markers+text"]
    csv = pd.read_csv(cb.comparison_csv(job.id))
    assert len(csv) == 4 and set(csv.run_id) == {r.id for r in job.runs} and set(csv.role) == {"compared"}
    assert metric in csv.columns


def test_a_sweep_is_shown_apart_from_the_compared_runs(tmp_path):
    job = wait(cb.start_comparison(TASK, ["lora"], "0", "20", "sweep", str(tmp_path)))
    _, runs, sweep, loss, *_ = cb.comparison_view(job.id)
    assert len(runs) == 1 and len(sweep) == 2 and set(runs.run_id).isdisjoint(sweep.run_id)
    assert len([t for t in loss.data if t.name.endswith(" train")]) == 1  # the loss chart: the compared run only
    assert set(pd.read_csv(cb.comparison_csv(job.id)).role) == {"compared", "sweep"}


def test_the_budget_field_sizes_every_variant(tmp_path):
    with pytest.raises(wb.ConfigError, match=r"budget='many' is invalid; budget must be an integer in \[1, "):
        cb.start_comparison(TASK, ["lora"], "0", "10", "0.01", str(tmp_path), None, "many")
    default = count_params(cb.get_task(TASK), "lora")
    job = wait(cb.start_comparison(TASK, ["lora", "dora"], "0", "10", "0.01", str(tmp_path), None, "1152"))
    _, runs, *_ = cb.comparison_view(job.id)
    assert job.error is None
    for params in runs.trainable_params:  # within one step of the size field (LoRA: 256 per rank on 2 layers)
        assert abs(params - 1152) <= 256 and params != default


# -- D: Train's module picker ------------------------------------------------------------------------------------

def test_train_has_a_module_picker_for_the_spectrum(tmp_path):
    demo = dashboard_app.build_app(str(tmp_path))
    pickers = [b for b in demo.blocks.values() if isinstance(b, dashboard_app.gr.Dropdown)
               and b.label == "module (the spectrum's layer)"]
    assert len(pickers) == 1
    job = wait(start(tmp_path, settings={"steps": 20}))
    assert cb.modules_of([job.run]) == ["layers.0", "layers.1"]
    first, second = (cb.live_figures(job.id, m)[2].layout.title.text for m in ("layers.0", "layers.1"))
    assert first != second  # the spectrum follows the picked module
    assert [value for _, value in cb.module_choices(["layers.0", "layers.1"])] == ["layers.0", "layers.1"]
    long = "encoder.encoder.layer.0.attention.self.query"
    label = dict((v, lab) for lab, v in cb.module_choices([long]))[long]
    assert label.endswith(f"({long})") and len(label) > len(long) + 3  # the short name first, as in the figures


# -- E: habits from TensorBoard, W&B and PEFT's comparison app ----------------------------------------------------

def _code_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_a_click_on_a_runs_row_picks_that_run_for_inspect(tmp_path):
    root = str(tmp_path)
    first, second = _saved_run(root, 10), _saved_run(root, 10)
    table = cb.runs_table(root)
    assert [cb.run_id_of_row(table, i) for i in range(2)] == list(table.id) and set(table.id) == {first, second}
    assert cb.run_id_of_row(table, 7) is None and cb.run_id_of_row(table, "x") is None
    demo = dashboard_app.build_app(root)
    labels = {b.value for b in demo.blocks.values() if isinstance(b, dashboard_app.gr.Button)}
    assert {"Open in Inspect", "This run as code", "Delete run…", "Confirm delete"} <= labels


def test_runs_are_grouped_by_the_comparison_that_made_them(tmp_path):
    root = str(tmp_path)
    alone = _saved_run(root, 10)
    job = wait(cb.start_comparison(TASK, ["lora", "full"], "0", "10", "0.01", root))
    later = _saved_run(root, 10)
    table = cb.runs_table(root)
    made = {r.id for r in job.runs}
    grouped = table[table.comparison != ""]
    assert set(grouped.id) == made and grouped.comparison.str.startswith(f"{job.id} · ").all()
    assert table.set_index("id").comparison[alone] == "" and table.set_index("id").comparison[later] == ""
    rows = list(table.id)
    at = sorted(rows.index(i) for i in made)
    assert at[-1] - at[0] == len(made) - 1  # listed together
    assert len(cb.runs_table(root, job.id)) == 2  # the filter finds a comparison's runs by its name


def test_delete_asks_first_naming_the_run(tmp_path):
    root = str(tmp_path)
    run_id = _saved_run(root, 10)
    question = cb.delete_question(root, run_id)
    assert run_id in question and "lora · synthetic:lowrank · " in question and "Confirm delete" in question
    assert cb.run_choices(root) == [run_id]  # asking deleted nothing
    with pytest.raises(wb.ConfigError, match="choose a run to delete"):
        cb.delete_question(root, "")
    assert "Deleted" in cb.delete_run(root, run_id) and cb.run_choices(root) == []


def test_this_run_as_code_repeats_the_run_and_gives_peft_its_config(tmp_path):
    root = str(tmp_path)
    original = wb.train(TASK, "lora", settings={"steps": 15, "lr": 0.02, "seed": 3}, config={"r": 4},
                        task_options={"noise": 0.05}, store=RunStore(root), progress=False)
    text = cb.run_as_code(root, original.id)
    train_code, peft_code = _code_blocks(text)
    scope: dict = {}
    exec(train_code.replace("store='runs'", f"store={str(tmp_path / 'again')!r}"), scope)  # noqa: S102 - our own
    again = scope["run"]
    assert again.config["config"] == original.config["config"] and again.config["settings"] == original.config[
        "settings"] and again.config["task_options"] == original.config["task_options"]
    assert again.summary["final_loss"] == original.summary["final_loss"]  # the same run, step for step
    peft = pytest.importorskip("peft")
    config = eval(peft_code.split("config = ", 1)[1].split("\n", 1)[0], {"LoraConfig": peft.LoraConfig})  # noqa: S307
    assert (config.r, config.lora_alpha, config.use_dora) == (4, 8.0, False)
    assert set(config.target_modules) == {"layers.0", "layers.1"}
    other = wb.train(TASK, "sora", settings={"steps": 5}, store=RunStore(root), progress=False)
    assert "PEFT has no native form of **sora**" in cb.run_as_code(root, other.id)


def test_the_learn_tab_warns_about_reconstructed_methods_and_shows_the_demos_config(monkeypatch):
    from workbench.variant import get_variant

    assert "Reconstructed" not in cb.learn_card("lora")
    monkeypatch.setattr(get_variant("lora"), "reconstruction", "the update rule is rebuilt from the abstract")
    assert ("⚠️ **Reconstructed from the paper's abstract** (no method section or official code was found): the "
            "update rule is rebuilt from the abstract") in cb.learn_card("lora")
    assert cb.demo_config_text(None) == ""
    job = wait(cb.start_demo("dora"), timeout=120)
    text = cb.demo_config_text(job.id)
    assert "Demo of **dora**" in text and f"steps={cb.DEMO_STEPS}" in text and "lr=0.01" in text
    assert all(f"{k}=" in text for k in job.run.config["config"])


def test_loss_charts_smooth_and_switch_their_scale(tmp_path):
    run = wb.train(cb.get_task(TASK), "lora", settings={"steps": 30, "every": 10}, progress=False)
    raw = run.loss_curve().value.tolist()
    out = cb.loss_chart(run, 0.6, "linear")
    expected, ema = [], 0.0
    for t, v in enumerate(raw, start=1):  # TensorBoard's debiased EMA, written out
        ema = 0.6 * ema + 0.4 * v
        expected.append(ema / (1 - 0.6 ** t))
    lines = [t for t in out.data if (t.name or "").endswith(" train")]
    assert any(list(t.y) == pytest.approx(expected) for t in lines), "no training line is the smoothed loss"
    assert any(list(t.y) == pytest.approx(raw) for t in out.data if t.y is not None)  # the raw line kept
    val = next(t for t in out.data if (t.name or "").endswith(" val"))
    evals = run.metrics[(run.metrics.probe == "eval") & (run.metrics.key == "loss")].value.tolist()
    assert list(val.y) == pytest.approx(evals)  # evaluations are never smoothed
    assert out.layout.yaxis.type == "linear" and cb.loss_chart(run).layout.yaxis.type == "log"
    with pytest.raises(wb.ConfigError, match=r"smoothing=1.5 is invalid; smoothing must be in \[0, 0.99\]"):
        cb.loss_chart(run, 1.5)
    with pytest.raises(wb.ConfigError, match="loss axis='cubic' is invalid"):
        cb.loss_chart(run, 0, "cubic")
    job = wait(start(tmp_path, settings={"steps": 20}))
    assert cb.live_figures(job.id, None, 0.5, "linear")[0].layout.yaxis.type == "linear"


def test_the_runs_table_refreshes_when_a_job_ends(tmp_path):
    """The Runs table is redrawn by the poll that notices a job ending (runs landing), not only by Refresh."""
    cfg = dashboard_app.build_app(str(tmp_path)).config
    table = next(c["id"] for c in cfg["components"] if c["props"].get("elem_id") == "runs-table")
    assert any(table in d["outputs"] and any(event == "tick" for _, event in d["targets"])
               for d in cfg["dependencies"])


def test_the_present_tab_shows_one_large_view_at_a_time(tmp_path):
    root = str(tmp_path)
    run_id = _saved_run(root, 20)
    for view in cb.PRESENT_VIEWS:
        fig, caption = cb.present_view(root, run_id, view)
        assert fig.layout.height == cb.PRESENT_HEIGHT and fig.layout.font.size == cb.PRESENT_FONT, view
        assert caption == dashboard_app.figures.caption(cb.PRESENT_VIEWS[view])
    with pytest.raises(wb.ConfigError, match="view='pie' is invalid; choose one of 'loss'"):
        cb.present_view(root, run_id, "pie")
    with pytest.raises(wb.ConfigError, match="choose a saved run"):
        cb.present_view(root, "", "loss")


def test_inspect_shows_doras_magnitudes_and_compare_its_sweep(tmp_path):
    root = str(tmp_path)
    dora = wb.train(cb.get_task(TASK), "dora", settings={"steps": 20}, store=RunStore(root), progress=False)
    lora = _saved_run(root, 10)
    assert cb.learns_magnitudes(root, dora.id) and not cb.learns_magnitudes(root, lora)
    fig = cb.inspect_magnitudes(root, dora.id)
    points = [t for t in fig.data if t.mode == "markers"]
    assert len(points) == 4 and all(len(t.x) == 64 for t in points)  # 2 modules x 2 panels, one point per row
    assert not [t for t in cb.inspect_magnitudes(root, lora).data if t.mode == "markers"]
    job = wait(cb.start_comparison(TASK, ["lora"], "0, 1", "15", "sweep", root))
    sweep = cb.comparison_sweep(job.id)
    xs = sorted(x for t in sweep.data if t.x is not None for x in t.x)
    assert len(set(xs)) == 3  # the three swept rates, the chosen one among them


def test_the_train_tab_trains_with_a_recipe_and_its_edited_options(tmp_path):
    # issue 18: the recipe form is generated from the recipe's Config and follows the settings' recipe row; an edited
    # option reaches train(recipe_options=...) and the run records it; a bad one is refused in the request, named
    settings, config, _ = cb.train_forms(TASK, "lora")
    settings.loc[settings.field == "recipe", "value"] = "altlora"
    settings.loc[settings.field == "steps", "value"] = "4"
    form, line = cb.recipe_form(settings, "lora")
    assert "altlora" in line and set(form.field) == set(wb.get_recipe("altlora").Config.field_names())
    form.loc[form.field == "mode", "value"] = "alternate"
    job = wait(cb.start_training(TASK, "lora", settings, config, str(tmp_path), None, form))
    assert job.error is None and job.run is not None
    assert job.run.config["recipe"] == "altlora" and job.run.config["recipe_options"]["mode"] == "alternate"
    form.loc[form.field == "beta1", "value"] = "7"
    with pytest.raises(wb.ConfigError, match="beta1"):
        cb.start_training(TASK, "lora", settings, config, str(tmp_path), None, form)
    settings.loc[settings.field == "recipe", "value"] = "adamx"
    with pytest.raises(wb.ConfigError, match="adamx"):
        cb.recipe_form(settings, "lora")


def test_compare_accepts_variant_and_recipe_pairs():
    with pytest.raises(wb.ConfigError, match="nosuch"):
        cb.start_comparison(TASK, ["lora+nosuch"], "0", "2", "0.01", "/tmp/unused-runs")


def test_the_servers_setup_limits_text_folders_to_its_data_folder(tmp_path, monkeypatch):
    """``serve`` calls :func:`dashboard_app.configure`: a form's text ``data_dir`` outside ``--data-dir`` is refused,
    one inside passes the check (the missing files are the next complaint), and ``build_app`` alone sets no limit."""
    import argparse

    from workbench.tasks.base import allowed_roots, restrict_paths

    data, outside = tmp_path / "data", tmp_path / "secret"
    data.mkdir()
    outside.mkdir()
    monkeypatch.delenv("WORKBENCH_DATA_DIR", raising=False)
    try:
        dashboard_app.configure(argparse.Namespace(data_dir=str(data), runs=str(tmp_path / "runs")))
        assert allowed_roots() == [data.resolve()]
        with pytest.raises(wb.ConfigError, match=r"data_dir=.* is invalid; data_dir must be a folder inside"):
            wb.tasks.get("text:sst2", data_dir=str(outside))
        with pytest.raises(wb.ConfigError, match="train.tsv"):
            wb.tasks.get("text:sst2", data_dir=str(data))
        # with no data folder at all, every local folder is refused
        monkeypatch.delenv("WORKBENCH_DATA_DIR", raising=False)
        dashboard_app.configure(argparse.Namespace(data_dir=None, runs=str(tmp_path / "runs")))
        assert allowed_roots() == []
        with pytest.raises(wb.ConfigError, match=r"data_dir must be a folder inside .*\(none\)"):
            wb.tasks.get("text:sst2", data_dir=str(data))
    finally:
        restrict_paths(None)


@pytest.mark.slow  # a fresh interpreter imports torch and gradio: ~10-25 s
def test_a_process_ending_right_after_build_app_exits_cleanly(tmp_path):
    """The warm-up thread is started once per process and joined at exit: a process that builds the app and ends
    at once used to abort inside ``import torch._dynamo`` (exit status 134), not exit with 0."""
    import subprocess
    import sys

    thread = dashboard_app.start_warm_up()
    assert dashboard_app.start_warm_up() is thread  # once per process, however many apps are built
    code = f"from workbench.dashboard import app; app.build_app({str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


def test_a_finished_job_lets_go_of_its_model_and_a_sessions_older_jobs_are_forgotten(tmp_path):
    """The soak's memory (issue 16): a finished job's saved run drops its live adaptation (a view that needs it
    restores it from the store), and a session's new job forgets its finished jobs of that kind (its page shows
    one job per kind); another session's job is kept."""
    from workbench import figures

    first = wait(start(tmp_path, settings={"steps": 6, "every": 3}, variant="dora", owner="session-a"))
    other = wait(start(tmp_path, settings={"steps": 6, "every": 3}, owner="session-b"))
    run = first.run
    assert run.status == "completed" and run.adaptation is None and (run.path / "adapter").is_dir()
    assert figures._adaptation_of(run) is not None  # restored from the store for the magnitude view
    assert len(cb.live_figures(first.id)) == 4 and run.snapshots  # the live plots still have their data
    second = wait(start(tmp_path, settings={"steps": 6, "every": 3}, owner="session-a"))
    assert jobs.get(first.id) is None and jobs.get(second.id) is second and jobs.get(other.id) is other


def test_sliders_checkbox_groups_and_tables_name_the_field_on_a_value_of_the_wrong_shape(tmp_path):
    """What a hand-written client may send (the fuzz, issue 16): a message naming the field and what it allows,
    raised as gr.Error before any callback (Gradio's own preprocess raised TypeError: a bare "Error")."""
    import gradio as gr

    demo = dashboard_app.build_app(str(tmp_path))
    by_label = {getattr(b, "label", None): b for b in demo.blocks.values()}
    smooth = by_label["smoothing of the training loss"]
    for bad in ("abc", None, [1, 2], float("nan"), 5.0):
        with pytest.raises(gr.Error, match=r"smoothing of the training loss: .* is not a number in \[0, 0\.99\]"):
            smooth.preprocess(bad)
    assert smooth.preprocess(0.5) == 0.5
    variants = next(b for label, b in by_label.items() if label and label.startswith("variants"))
    with pytest.raises(gr.Error, match=r"variants: 5 is not a list; choose one or more of .*\blora, .*\bdora\b"):
        variants.preprocess(5)
    settings = next(b for label, b in by_label.items() if label and label.startswith("training settings"))
    for bad, shown in (("not a table", "'not a table'"), (7, "7")):
        with pytest.raises(gr.Error, match=rf"training settings: the table must have columns field, value "
                                           rf"\(got {shown}\)"):
            settings.data_model.model_validate(bad)
    with pytest.raises(gr.Error, match=r"training settings: the table must have columns field, value \(got x\)"):
        settings.preprocess(settings.data_model.model_validate({"headers": ["x"], "data": [[None]]}))
    with pytest.raises(gr.Error, match=r"\(got None\)"):
        settings.preprocess(None)
    good = settings.data_model.model_validate({"headers": ["field", "value"], "data": [["steps", "5"]]})
    assert list(settings.preprocess(good).columns) == ["field", "value"]
    with pytest.raises(wb.ConfigError, match=r"^run: \"\['lora', 'dora'\]\" is not a run id"):
        cb.delete_run(str(tmp_path), ["lora", "dora"])
