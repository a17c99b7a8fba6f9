"""The dashboard's callbacks, called directly: forms, validation messages, a job from start to saved run,
inspection, landscapes, downloads and deletion; the Learn card's sizing note; a caption under every plot; and the
app's safe launch settings, from `python app.py` and `workbench dashboard` alike."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import workbench as wb
from workbench import cli
from workbench import figures as F
from workbench.dashboard import app as dashboard_app
from workbench.dashboard import callbacks as cb
from workbench.dashboard import jobs
from workbench.dashboard.forms import config_table, parse_config
from workbench.dashboard.learn import sizing_note

ROOT = Path(__file__).resolve().parents[1]


def wait(job_id: str, timeout: float = 60) -> jobs.Job:
    job = jobs.get(job_id)
    deadline = time.time() + timeout
    while not job.done and time.time() < deadline:
        time.sleep(0.05)
    assert job.done, "the job did not finish in time"
    return job


def test_config_form_lists_every_field_with_default_and_range():
    table = config_table("lora")
    assert table.field.tolist() == ["r", "alpha", "dropout", "init"]
    assert table.set_index("field").loc["r", "allowed"] == "integer in [1, min(out, in)]"
    assert parse_config("lora", table) == {"r": 8, "alpha": 8.0, "dropout": 0.0, "init": "default"}


@pytest.mark.parametrize("field,value,message", [("r", "abc", "r='abc' is invalid; r must be integer"),
                                                 ("r", "2.5", "r='2.5' is invalid"),
                                                 ("alpha", "nan", "alpha='nan' is invalid")])
def test_config_form_rejects_text_where_a_number_belongs(field, value, message):
    table = config_table("lora")
    table.loc[table.field == field, "value"] = value
    with pytest.raises(wb.ConfigError, match=message):
        parse_config("lora", table)


def test_bad_training_input_starts_nothing(tmp_path):
    table = config_table("lora")
    before = len(jobs._JOBS)
    table.loc[table.field == "r", "value"] = "65"  # larger than the 64x64 layers of synthetic:lowrank
    with pytest.raises(wb.ConfigError, match=r"r=65 is invalid; r must be an integer in \[1, 64\] for layer"):
        cb.start_training("synthetic:lowrank", "lora", table, 10, 0.01, 0, 32, 5, str(tmp_path))
    with pytest.raises(wb.ConfigError, match="steps='ten' is invalid"):
        cb.start_training("synthetic:lowrank", "lora", config_table("lora"), "ten", 0.01, 0, 32, 5, str(tmp_path))
    with pytest.raises(wb.ConfigError, match="choose at least one variant"):
        cb.start_comparison("synthetic:lowrank", [], "0", 10, "0.01", str(tmp_path))
    with pytest.raises(wb.ConfigError, match="seeds"):
        cb.start_comparison("synthetic:lowrank", ["lora"], "one", 10, "0.01", str(tmp_path))
    with pytest.raises(wb.ConfigError, match="task option 'layout' is invalid; write key=value pairs"):
        cb.start_training("synthetic:mixed", "lora", config_table("lora"), 10, 0.01, 0, 32, 5, str(tmp_path),
                          "layout")
    with pytest.raises(wb.ConfigError, match=r"unknown option key 'layot'; did you mean 'layout'\? Valid keys: dim"):
        cb.start_comparison("synthetic:mixed", ["lora"], "0", 10, "0.01", str(tmp_path), "layot=parallel")
    with pytest.raises(wb.ConfigError, match="layout must be one of 'chain', 'parallel'"):
        cb.start_training("synthetic:mixed", "lora", config_table("lora"), 10, 0.01, 0, 32, 5, str(tmp_path),
                          "layout=tree")
    assert len(jobs._JOBS) == before
    assert cb.runs_table(str(tmp_path)).empty


def test_training_job_streams_saves_and_is_inspectable(tmp_path):
    root = str(tmp_path)
    job_id = cb.start_training("synthetic:lowrank", "lora", config_table("lora"), "60", "0.01", "0", "32", "10",
                               root)
    job = wait(job_id)
    assert job.error is None and job.run.status == "completed"
    assert "completed" in cb.job_status(job_id) and "rel_error" in cb.job_status(job_id)
    loss, grads, spectra, alloc = cb.live_figures(job_id)
    assert len(loss.data) == 2 and len(spectra.data) == 2
    (run_id,) = cb.run_choices(root)
    lo, hi, modules = cb.run_steps(root, run_id)
    assert (lo, hi) == (0, 59) and modules == ["layers.0", "layers.1"]
    view = cb.inspect_view(root, run_id, 30, "layers.1")
    assert "lora" in view[0] and "step 30" in view[1].layout.title.text
    fig, text = cb.compute_landscape(root, run_id, "delta", "1", "5", "0.5")
    assert "sharpness" in text and len(fig.data) == 1
    files = cb.download_files(root, run_id)
    assert [Path(f).suffix for f in files] == [".zip", ".csv", ".zip"]
    assert pd.read_csv(files[1]).shape[1] == 5
    assert "Deleted" in cb.delete_run(root, run_id) and cb.run_choices(root) == []


def test_task_options_reach_the_run_and_its_inspection(tmp_path):
    root = str(tmp_path)
    job = wait(cb.start_training("synthetic:mixed", "lora", config_table("lora"), "20", "0.01", "0", "32", "10", root,
                                 "layout=parallel, noise=0.05"))
    assert job.error is None and job.run.status == "completed"
    (run_id,) = cb.run_choices(root)
    saved = cb.load_run(root, run_id)
    assert saved.config["task_options"]["layout"] == "parallel" and saved.config["task_options"]["noise"] == 0.05
    task = cb.task_of(saved)
    assert task.options()["layout"] == "parallel" and task.model()(torch.randn(2, 64)).shape == (2, 6 * 64)
    fig, text = cb.compute_landscape(root, run_id, "delta", "1", "3", "0.5")  # rebuilt on the parallel task
    assert "sharpness" in text


def test_two_jobs_at_once_do_not_mix(tmp_path):
    a = cb.start_training("synthetic:lowrank", "lora", config_table("lora"), 40, 0.01, 0, 32, 10, str(tmp_path))
    b = cb.start_training("synthetic:fullrank", "dora", config_table("dora"), 40, 0.01, 1, 32, 10, str(tmp_path))
    ja, jb = wait(a), wait(b)
    assert (ja.run.task, ja.run.variant) == ("synthetic:lowrank", "lora")
    assert (jb.run.task, jb.run.variant) == ("synthetic:fullrank", "dora")
    assert len(cb.runs_table(str(tmp_path))) == 2
    assert len(cb.runs_table(str(tmp_path), "dora")) == 1


def test_stop_and_worker_errors_are_reported(tmp_path, monkeypatch):
    job_id = cb.start_training("synthetic:lowrank", "lora", config_table("lora"), 20000, 0.01, 0, 32, 10,
                               str(tmp_path))
    time.sleep(0.3)
    cb.stop_job(job_id)
    assert wait(job_id).run.status == "stopped"

    def boom(*args, **kwargs):
        raise RuntimeError("worker exploded")

    monkeypatch.setattr(cb, "train", boom)
    failed = cb.start_training("synthetic:lowrank", "lora", config_table("lora"), 10, 0.01, 0, 32, 10,
                               str(tmp_path))
    wait(failed)
    assert "worker exploded" in cb.job_status(failed)


def test_diverging_training_is_reported(tmp_path):
    job = wait(cb.start_training("synthetic:lowrank", "lora", config_table("lora"), 50, 1e3, 0, 32, 5,
                                 str(tmp_path)))
    assert job.run.status == "diverged"
    assert "diverged" in cb.job_status(job.id) and "smaller learning rate" in cb.job_status(job.id)


def test_comparison_job(tmp_path):
    job = wait(cb.start_comparison("synthetic:lowrank", ["lora", "full"], "0, 1", "20", "0.01", str(tmp_path)))
    assert job.error is None and len(job.runs) == 4
    table, loss, spectra, alloc, freq = cb.comparison_view(job.id, "layers.0")
    assert len(table.data[0].cells.values[0]) == 4
    assert "4 runs started, 4 finished" in cb.comparison_status(job.id)


def test_learn_card_counts_parameters():
    text = cb.learn_card("lora", "synthetic:lowrank")
    assert "2,048" in text and "Hu et al." in text and "$" in text
    assert "Sized for much larger layers" not in text  # r = 8 fits 64×64 layers


@pytest.mark.parametrize("variant,field", [("fourierft", "n_frequency"), ("loca", "n")])
def test_learn_card_says_when_a_default_is_sized_for_larger_layers(variant, field):
    text = cb.learn_card(variant, "synthetic:lowrank")
    (line,) = [line for line in text.splitlines() if "Sized for much larger layers" in line]
    assert f"`{field}` = 1,000 covers 24% of a 64×64 layer's 4,096 weights" in line


def test_sizing_rule_reads_the_declaration_and_the_layer():
    fields = {v.name: v.config.fields_info() for v in wb.variant_infos()}
    small = {"a": (64, 64), "b": (64, 64)}
    assert sizing_note(fields["fourierft"], {"a": (768, 768)}) == ""  # 1,000 of 589,824: what the paper sized
    assert "`r` = 256 exceeds half of a 64×64 layer's full rank (64)" in sizing_note(fields["vera"], small)
    assert sizing_note(fields["vera"], {"a": (1024, 1024)}) == ""
    assert "`r` = 8 exceeds half of a 12×64 layer's full rank (12)" in sizing_note(fields["lora"],
                                                                                   {"a": (64, 64), "b": (12, 64)})
    assert {name for name, f in fields.items() if sizing_note(f, small)} == {"fourierft", "loca", "vera"}


def _launches(monkeypatch) -> dict:
    seen = {}
    monkeypatch.setattr(dashboard_app.gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    return seen


def test_app_binds_locally_without_share_or_analytics(monkeypatch):
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    seen = _launches(monkeypatch)
    dashboard_app.main(["--port", "7999"])
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False and seen["server_port"] == 7999


def test_workbench_dashboard_command_and_app_py_start_the_same_dashboard(monkeypatch, tmp_path):
    seen = _launches(monkeypatch)
    monkeypatch.setenv("WORKBENCH_DATA_DIR", "")
    assert cli.main(["dashboard", "--port", "7998", "--runs", str(tmp_path), "--data-dir", str(tmp_path)]) == 0
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False and seen["server_port"] == 7998
    assert os.environ["WORKBENCH_DATA_DIR"] == str(tmp_path)
    sys.path.insert(0, str(ROOT))
    import app  # the root shim that `python app.py` and `make run` start

    assert app.main is dashboard_app.main and app.build_app is dashboard_app.build_app


def test_every_plot_has_its_caption_under_it(tmp_path):
    demo = dashboard_app.build_app(str(tmp_path))
    plots = [b for b in demo.blocks.values() if isinstance(b, dashboard_app.gr.Plot)]
    known = set(F.CAPTIONS.values()) | {F.caption("small_multiples", k) for k in ("spectra", "allocation", "dct")}
    assert len(plots) >= 20
    for plot in plots:
        siblings = plot.parent.children
        after = siblings[siblings.index(plot) + 1]
        assert isinstance(after, dashboard_app.gr.Markdown) and "caption" in after.elem_classes, plot.label
        assert after.value in known, (plot.label, after.value)


def test_learn_demo_completes_its_short_run_and_learns():
    """The Learn tab's "10-second demo" is short by its step count (DEMO_STEPS on the synthetic task), not by a clock
    that a busy machine would break: the run completes every step, with a finite loss below the initial one."""
    import math

    job = wait(jobs.get(cb.start_demo("dora")).id, timeout=120)
    run = job.run
    assert run.status == "completed" and run.variant == "dora" and run.task == cb.DEMO_TASK
    assert run.summary["steps_done"] == cb.DEMO_STEPS <= 200
    final, init = run.summary["final_loss"], run.summary["init_loss"]
    assert math.isfinite(final) and final < 0.5 * init
