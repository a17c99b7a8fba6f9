"""The notebook widgets (issue 23), driven without a browser: set widget values, press buttons (``button.click()``
fires the same handlers a browser does), wait for the worker, and check what the panel shows: figures whose data
grow while the run trains, the form generated from the declarations, a bad value shown in the panel (never raised),
Stop, and the latency from Run to the first live point on synthetic:lowrank."""

from __future__ import annotations

import time

import pytest

import workbench as wb
from workbench.dashboard.forms import cell
from workbench.widgets import compare_panel, inspect_panel, landscape_panel, train_panel
from workbench.widgets.train import _WARM

TASK = "synthetic:lowrank"


@pytest.fixture(scope="module")
def task():
    return wb.tasks.get(TASK)


@pytest.fixture(scope="module")
def trained(task):
    """A finished 40-step LoRA run from a panel (shared by the inspect and landscape tests)."""
    panel = train_panel(task, "lora", steps=40, every=10)
    panel.run_button.click()
    panel.wait(60)
    assert panel.run.status == "completed", panel.error.value
    return panel


def loss_points(panel) -> int:
    """Points of the training-loss line(s) the panel's loss figure shows now."""
    return sum(len(t.x) for t in panel.figures["loss"].data if t.x is not None and "val" not in (t.name or ""))


def test_form_is_generated_from_the_declarations(task):
    panel = train_panel(task, "lora", r=3, steps=25)
    config_fields = set(panel.config_form.fields)
    assert config_fields == set(wb.get_variant("lora").Config.field_names())
    assert set(panel.settings_form.fields) == set(wb.TrainSettings.field_names())
    # values the call gave are shown (and kept as explicit); the rest as train() would resolve them
    assert panel.config_form.texts()["r"] == "3"
    assert panel.settings_form.texts()["steps"] == "25"
    assert panel.settings_form.texts()["lr"] == cell(task.defaults["lr"])
    # a field with choices is a dropdown of exactly its declared choices
    schedule = panel.settings_form.fields["lr_schedule"]
    info = next(f for f in wb.TrainSettings.fields_info() if f["name"] == "lr_schedule")
    assert tuple(schedule.options) == tuple(info["choices"])
    assert panel.values() == ({"steps": 25}, {"r": 3})
    panel.config_form.set(alpha="2.5")
    assert panel.values()[1] == {"r": 3, "alpha": 2.5}


def test_unknown_keyword_is_refused_at_the_call(task):
    with pytest.raises(wb.ConfigError, match="rr"):
        train_panel(task, "lora", rr=4)


@pytest.mark.parametrize("field, text, message", [
    ("r", "abc", r"r='abc' is invalid; r must be integer"),
    ("r", "100", r"r=100 is invalid; r must be an integer in \[1, 64\] for layer layers.0 \(64x64\)"),  # shapes
])
def test_bad_config_value_shows_in_the_panel(task, field, text, message):
    import re

    panel = train_panel(task, "lora", steps=10)
    panel.config_form.set(**{field: text})
    panel.run_button.click()  # must not raise
    assert re.search(message, panel.error.value), panel.error.value
    assert panel.job is None  # nothing started on bad input


def test_bad_setting_value_shows_in_the_panel(task):
    panel = train_panel(task, "lora", steps=10)
    panel.settings_form.set(lr="-1")
    panel.run_button.click()
    assert "lr=-1.0 is invalid" in panel.error.value and panel.job is None
    panel.settings_form.set(lr="0.01")  # fixed: the next press runs and clears the error
    panel.run_button.click()
    panel.wait(60)
    assert panel.error.value == "" and panel.run.status == "completed"


def test_figures_update_while_training_and_first_point_latency(task):
    # 2,000 steps: a 400-step run (about 1 s) ended before the first throttled redraw when CI's other worker was
    # running the browser tests
    panel = train_panel(task, "lora", steps=2000, every=20)
    assert _WARM.wait(60), "the warm-up thread did not finish"
    assert all(len(f.data) == 0 for f in panel.figures.values())
    panel.run_button.click()
    live = None
    deadline = time.time() + 60
    while time.time() < deadline and not panel.job.done:
        if loss_points(panel) > 0:
            live = (loss_points(panel), panel.run.status, panel.progress.value)
            break
        time.sleep(0.01)
    latency = panel.first_point_seconds
    panel.wait(60)
    print(f"\nRun -> first live point on {TASK}: {latency:.2f} s")
    assert live is not None, "no point was drawn while the run trained"
    points, status, progress = live
    assert status == "running" and 0 < progress < 2000
    assert loss_points(panel) > points  # the figure kept growing after the first live point
    assert loss_points(panel) == len(panel.run.loss_curve())  # and ends with every logged step
    assert panel.progress.value == 2000
    assert panel.redraws >= 2 and panel.run.status == "completed"
    assert all(len(panel.figures[name].data) > 0 for name in ("loss", "gradients", "spectrum"))
    assert latency is not None and latency < 5.0  # target 2 s (reported); 5 s leaves room for a loaded machine


def test_redraws_are_throttled(task):
    panel = train_panel(task, "lora", steps=300, every=1, probes=["gradients"])
    panel.run_button.click()
    panel.wait(60)
    events = panel.job.version
    seconds = panel.job.ended - panel.job.started
    assert events > 100  # one event per probe check: 300 of them
    assert panel.redraws <= seconds / panel.interval + 3 < events


def test_stop_ends_the_run(task):
    panel = train_panel(task, "lora", steps=100_000, every=50)
    panel.run_button.click()
    deadline = time.time() + 30
    while panel.run is None and time.time() < deadline:
        time.sleep(0.02)
    assert panel.stop_button.disabled is False and panel.run_button.disabled is True
    panel.stop_button.click()
    panel.wait(30)
    assert panel.run.status == "stopped" and len(panel.run.loss_curve()) < 100_000
    assert panel.run_button.disabled is False and "stopped" in panel.status.value


def test_module_dropdown_redraws_the_spectrum(trained):
    first, second = trained.module.options[:2]
    trained.module.value = second
    assert second.split(".")[-1] in trained.figures["spectrum"].layout.title.text.replace("L", "")
    trained.module.value = first
    assert trained.figures["spectrum"].layout.title.text != ""


def test_inspect_panel_step_module_and_view(trained):
    run = trained.run
    panel = inspect_panel(trained)
    steps = run.snapshot_steps("spectra", "singular_values")
    assert list(panel.step.options) == steps and panel.step.value == steps[-1]
    assert set(panel.module.options) == set(run.snapshot_modules("spectra", "singular_values"))
    # the spectrum at a step is the recorded singular values at that step
    panel.step.value = steps[1]
    sigma = run.snapshot("spectra", "singular_values", panel.module.value, steps[1])
    drawn = panel.figure.data[0]  # the learned ΔW's values (the true ΔW's follow, dashed)
    assert max(drawn.y) == pytest.approx(float(sigma.max()), rel=1e-5)
    before = panel.redraws
    panel.view.value = "loss"
    assert panel.redraws == before + 1 and len(panel.figure.data) >= 1
    assert any(s.x0 == steps[1] for s in panel.figure.layout.shapes)  # the selected step is marked
    panel.view.value = "frequency map"
    assert panel.figure.data[0].type == "heatmap" and panel.error.value == ""
    assert wb.figures.caption("frequency_map") in panel.caption.value


def test_inspect_panel_refuses_a_bad_view(trained):
    with pytest.raises(wb.ConfigError, match="view='nope' is invalid"):
        inspect_panel(trained.run, view="nope")


def test_landscape_panel(trained):
    panel = landscape_panel(trained.run, task=trained.task, points=5)
    panel.points.value = "2"
    panel.compute_button.click()
    assert "grid points=2 is invalid" in panel.error.value and panel.job is None
    panel.points.value = "5"
    panel.compute_button.click()
    panel.wait(60)
    result = panel.result
    assert panel.error.value == "" and len(result["alphas"]) == 5
    trace = panel.figure.data[0]
    assert list(trace.y) == pytest.approx([float(v) for v in result["loss"]])
    assert panel.progress.value == 1.0 and "centre loss" in panel.status.value


def test_compare_panel(task):
    panel = compare_panel(task, ["lora", "dora"], steps=20, probes=["spectra"])
    panel.seeds.value = "zero"
    panel.run_button.click()
    assert "seeds='zero' is invalid" in panel.error.value and panel.job is None
    panel.seeds.value = "0"
    panel.lr.value = "fast"
    panel.run_button.click()
    assert "lr='fast' is invalid" in panel.error.value
    panel.lr.value = "default"
    panel.run_button.click()
    panel.wait(120)
    comparison = panel.comparison
    assert panel.error.value == "" and [r.variant for r in comparison.runs] == ["lora", "dora"]
    names = {t.name for t in panel.figures["loss"].data}
    assert any(n and n.startswith("lora") for n in names) and any(n and n.startswith("dora") for n in names)
    assert "lora" in panel.table.value and "dora" in panel.table.value
    assert panel.progress.value == 40
