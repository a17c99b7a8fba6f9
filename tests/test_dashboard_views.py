"""What the dashboard's views show (issue 17, items 1, 3 and 5): the task's metric over steps on Train and Inspect and
every evaluation on the loss chart; run pickers labelled ``variant · task · time`` that refresh on page load, on
opening a tab, on Refresh and when a job ends; Inspect's step box and slider (by the snapshot cadence) redrawing the
plots, with the selected step marked on every panel over training steps."""

from __future__ import annotations

import time

import pytest

import workbench as wb
from workbench import figures as F
from workbench.dashboard import app as dashboard_app
from workbench.dashboard import callbacks as cb
from workbench.dashboard import jobs
from workbench.runs import RunStore

TASK = "synthetic:lowrank"


def _train(root, steps=40, every=10, eval_every=10, callback=None, control=None, variant="lora"):
    return wb.train(cb.get_task(TASK), variant, settings={"steps": steps, "every": every, "eval_every": eval_every},
                    store=RunStore(root), progress=False, callback=callback, control=control)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runs"))
    run = _train(root)
    return root, run.id


# -- item 1: the task's metric over steps; every evaluation on the loss chart ---------------------------------

def test_the_tasks_metric_is_plotted_at_every_evaluation(saved):
    root, run_id = saved
    run = cb.load_run(root, run_id)
    ev = run.metrics[(run.metrics.probe == "eval") & (run.metrics.key == "rel_error")]
    assert len(ev) > 2  # intermediate evaluations, not only the first and the last
    fig = F.validation_metric(run)
    assert list(fig.data[0].y) == ev.value.tolist() and "rel_error" in fig.layout.title.text
    loss = F.loss_curves([run, run], band=False)  # each run its own lines (two runs of a variant band by default)
    val = [t for t in loss.data if t.name.endswith("val")][0]
    assert len(val.x) == len(ev)  # the loss chart's validation trace shows every eval point
    kinds = [t.name.rsplit(" ", 1)[1] for t in loss.data]
    assert kinds == ["train", "train", "val", "val"]  # markers drawn over every training line, not hidden under one
    assert val.marker.size >= 8 and val.marker.line.color == "white"
    assert F.metric_name(run) == "rel_error"
    assert "validation" in F.caption("validation_metric")


def test_train_and_inspect_show_the_metric(saved):
    root, run_id = saved

    def work(job):
        return _train(root, steps=20, every=5, eval_every=5, callback=job.on_event, control=job.control)

    job = jobs.start("train", work)
    deadline = time.time() + 60
    while not job.done and time.time() < deadline:
        time.sleep(0.05)
    assert job.done and job.error is None
    live = cb.live_metric(job.id)
    assert len(live.data) == 1 and len(live.data[0].x) > 2
    assert cb.live_metric(None).layout.annotations  # nothing yet: a note, not an error
    view = cb.inspect_view(root, run_id, 20, "layers.0")
    loss, metric = view[-2], view[-1]
    assert any(t.name.endswith("val") for t in loss.data) and "rel_error" in metric.layout.title.text


# -- item 3: run pickers ------------------------------------------------------------------------------------

def test_run_pickers_are_labelled_variant_task_time_and_keep_the_id(saved):
    root, run_id = saved
    options = cb.run_options(root)
    labels = dict((value, label) for label, value in options)
    assert run_id in labels
    variant, task, created = labels[run_id].split(" · ")[:3]
    assert (variant, task) == ("lora", TASK) and created[:4].isdigit() and run_id not in labels[run_id]
    assert [value for _, value in options] == cb.run_choices(root)


def _dependencies(demo):
    cfg = demo.config
    comps = {c["id"]: c for c in cfg["components"]}
    return cfg, comps


def test_run_pickers_refresh_on_load_tab_select_refresh_and_job_end(tmp_path):
    demo = dashboard_app.build_app(str(tmp_path))
    cfg, comps = _dependencies(demo)
    pickers = {c["id"] for c in cfg["components"] if c["type"] == "dropdown"
               and c["props"].get("label") in ("saved run", "run")}
    assert len(pickers) == 3  # Inspect, Landscape, Runs
    tabs = {c["props"]["label"]: c["id"] for c in cfg["components"] if c["type"] == "tabitem"}
    refreshing = [d for d in cfg["dependencies"] if pickers <= set(d["outputs"])]
    triggers = {(comps[i]["type"] if i in comps else "app", comps.get(i, {}).get("props", {}).get("label"), event)
                for d in refreshing for i, event in d["targets"]}
    assert ("app", None, "load") in triggers or any(event == "load" for _, _, event in triggers)
    for tab in ("Inspect", "Landscape", "Runs"):
        assert any(i == tabs[tab] and event == "select" for d in refreshing for i, event in d["targets"]), tab
    buttons = [comps[i]["props"].get("value") for d in refreshing for i, event in d["targets"]
               if event == "click" and i in comps]
    assert buttons.count("Refresh list") == 2  # Inspect's and Landscape's own
    assert any(event == "tick" for _, _, event in triggers)  # the poll that notices a job ending
    land_row = [c for c in cfg["components"] if c["props"].get("elem_id") == "land-run"]
    assert land_row


def test_a_finished_job_is_counted_for_the_refresh(saved):
    root, _ = saved
    job = jobs.start("train", lambda job: _train(root, steps=5, every=5, eval_every=5, callback=job.on_event,
                                                control=job.control))
    deadline = time.time() + 60
    while not job.done and time.time() < deadline:
        time.sleep(0.05)
    assert cb.jobs_finished([None, job.id]) == 1 and cb.jobs_finished([None]) == 0


# -- item 5: Inspect's step ---------------------------------------------------------------------------------

def test_slider_steps_by_the_snapshot_cadence(saved):
    root, run_id = saved
    assert cb.snapshot_cadence(root, run_id) == 10


def test_the_selected_step_is_marked_on_every_time_series_panel(saved):
    root, run_id = saved
    view = cb.inspect_view(root, run_id, 20, "layers.0")
    over_steps = {"effective rank": view[3], "similarity": view[4], "gradients": view[5],
                  "loss": view[9], "metric": view[10]}
    # lora does not allocate: its allocation panel is one line (figures.allocation_summary), no steps to mark
    assert not view[6].data and "fixed rank" in view[6].layout.annotations[0].text
    for name, fig in over_steps.items():
        marks = [s for s in fig.layout.shapes if s.type == "line" and s.x0 == 20 and s.x1 == 20]
        assert marks, f"the {name} panel does not mark step 20"
    assert not cb.inspect_view(root, run_id, 30, "layers.0")[3].layout.shapes[0].x0 == 20


def test_the_step_box_redraws_the_plots(tmp_path):
    """Typing a step in the slider's number box fires ``input`` at each keystroke (``release``, the only event wired
    before, fires on blur or when the handle is let go): the plots redraw on it, for the latest value typed."""
    demo = dashboard_app.build_app(str(tmp_path))
    cfg, comps = _dependencies(demo)
    (slider,) = [c["id"] for c in cfg["components"] if c["type"] == "slider"
                 and c["props"].get("label") == "training step"]
    redraws = [d for d in cfg["dependencies"] if (slider, "input") in [tuple(t) for t in d["targets"]]]
    assert redraws and len(redraws[0]["outputs"]) == 11 and redraws[0]["trigger_mode"] == "always_last"
