"""The dashboard's callbacks, called directly: forms generated from the declarations (variant configs, training
settings, task options) filled with task defaults and presets, validation messages, a job from start to saved run,
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
from workbench.dashboard.forms import changed_options, options_table, parse_options
from workbench.dashboard.learn import sizing_note
from workbench.settings import Preset, TrainSettings
from workbench.tasks.synthetic import SyntheticOptions

ROOT = Path(__file__).resolve().parents[1]


def wait(job_id: str, timeout: float = 60) -> jobs.Job:
    job = jobs.get(job_id)
    deadline = time.time() + timeout
    while not job.done and time.time() < deadline:
        time.sleep(0.05)
    assert job.done, "the job did not finish in time"
    return job


def edit(table: pd.DataFrame, **values) -> pd.DataFrame:
    """The form with some value cells typed over, as a user does in the page (every cell is text)."""
    table = table.copy()
    for name, value in values.items():
        assert name in set(table.field), f"{name} is not a row of the form"
        table.loc[table.field == name, "value"] = str(value)
    return table


def start(task: str, variant: str, root, settings: dict | None = None, config: dict | None = None,
          options: dict | None = None) -> str:
    """Press Run on the Train tab: the forms as (task, variant) fills them, with ``settings``, ``config`` and task
    ``options`` typed over."""
    shown_settings, shown_config, _ = cb.train_forms(task, variant)
    task_options = edit(cb.task_options_form(task), **(options or {}))
    return cb.start_training(task, variant, edit(shown_settings, **(settings or {})),
                             edit(shown_config, **(config or {})), str(root), task_options)


@pytest.fixture
def lora_preset(monkeypatch):
    """A preset on lora for every synthetic task (a config value and a setting), whatever the registry declares."""
    preset = Preset("synthetic:*", config={"r": 4}, settings={"lr": 2e-2}, reason="a test preset.")
    monkeypatch.setattr(wb.get_variant("lora"), "presets", (preset,))
    return preset


# -- forms from declarations -----------------------------------------------------------------------------------

def test_config_form_lists_every_field_with_default_and_range():
    table = options_table(wb.get_variant("lora").Config)
    assert table.field.tolist() == ["r", "alpha", "dropout", "init"]
    assert table.set_index("field").loc["r", "allowed"] == "integer in [1, min(out, in)]"
    assert parse_options(wb.get_variant("lora").Config, table, "lora") == {"r": 8, "alpha": 8.0, "dropout": 0.0,
                                                                            "init": "default"}


@pytest.mark.parametrize("field,value,message", [("r", "abc", "lora: r='abc' is invalid; r must be integer"),
                                                 ("r", "2.5", "r='2.5' is invalid"),
                                                 ("alpha", "nan", "alpha='nan' is invalid")])
def test_config_form_rejects_text_where_a_number_belongs(field, value, message):
    config = wb.get_variant("lora").Config
    with pytest.raises(wb.ConfigError, match=message):
        parse_options(config, edit(options_table(config), **{field: value}), "lora")


def test_every_declaration_round_trips_through_its_form():
    """The form shows each declared default as text that the one parser reads back to the same value (None as
    'none', booleans, choices), for every variant's config, the training settings and every task's options."""
    declarations = [(v.name, wb.get_variant(v.name).Config) for v in wb.variant_infos()]
    declarations += [("train", TrainSettings)] + [(n, cb.task_option_class(n)) for n in wb.tasks.names()]
    for owner, option_class in declarations:
        table = options_table(option_class)
        defaults = {f["name"]: f["default"] for f in option_class.fields_info()}
        assert parse_options(option_class, table, owner) == defaults, owner
        assert changed_options(option_class, table, {}, owner) == {}, owner


def test_task_options_form_round_trips_and_reaches_the_task():
    table = cb.task_options_form("synthetic:mixed")
    assert table.field.tolist() == SyntheticOptions.field_names()
    assert table.set_index("field").loc["depth", "value"] == "none"
    assert table.set_index("field").loc["layout", "allowed"] == "one of chain, parallel"
    edited = edit(table, layout="parallel", noise="0.05")
    assert changed_options(SyntheticOptions, edited, {}, "synthetic:mixed") == {"layout": "parallel", "noise": 0.05}
    task = cb.task_from_form("synthetic:mixed", edited)
    assert task.options()["layout"] == "parallel" and task.options()["noise"] == 0.05
    # another synthetic task keeps what was typed (same declaration); a digits task shows its own, at defaults
    kept = cb.task_options_form("synthetic:lowrank", edited)
    assert kept.set_index("field").loc["layout", "value"] == "parallel"
    assert cb.task_options_form("digits:rotate", edited).field.tolist() == ["stage", "seed"]


def test_train_form_shows_task_defaults_and_the_preset_with_their_source(lora_preset):
    settings, config, note = cb.train_forms("synthetic:mixed", "lora")
    s, c = settings.set_index("field"), config.set_index("field")
    assert list(settings.columns) == ["field", "value", "from", "allowed", "help"]
    assert s.loc["steps", "value"] == "200" and s.loc["steps", "from"] == "task"  # synthetic tasks' own defaults
    assert s.loc["lr", "value"] == "0.02" and s.loc["lr", "from"] == "preset"
    assert s.loc["seed", "from"] == "default" and s.loc["max_grad_norm", "value"] == "none"
    assert c.loc["r", "value"] == "4" and c.loc["r", "from"] == "preset"
    assert c.loc["alpha", "value"] == "8.0" and c.loc["alpha", "from"] == "default"
    assert "synthetic:*" in note and "a test preset." in note
    _, config, note = cb.train_forms("digits:rotate", "lora")
    assert "No preset" in note and set(config["from"]) == {"default"}


def test_sora_form_on_the_mixed_task_fills_from_its_preset():
    """Issue 12: the dashboard's form fills from the presets declared next to the variant."""
    preset = wb.get_variant("sora").preset_for("synthetic:mixed")
    assert preset is not None, "sora declares no preset that applies to synthetic:mixed"
    settings, config, note = cb.train_forms("synthetic:mixed", "sora")
    rows = {**settings.set_index("field").to_dict("index"), **config.set_index("field").to_dict("index")}
    for name, value in {**preset.settings, **preset.config}.items():
        assert rows[name]["from"] == "preset" and rows[name]["value"] == str(value), name
    assert preset.reason in note


def test_an_edited_value_is_explicit_and_untouched_ones_keep_their_source(tmp_path, lora_preset):
    job = wait(start("synthetic:mixed", "lora", tmp_path, settings={"steps": 12, "every": 4}, config={"alpha": 2}))
    assert job.error is None and job.run.status == "completed"
    sources, run = job.run.config["sources"], job.run
    assert run.config["steps"] == 12 and sources["settings"]["steps"] == "explicit"
    assert sources["config"]["alpha"] == "explicit" and run.config["config"]["alpha"] == 2.0
    assert sources["settings"]["lr"] == "preset" and run.config["lr"] == 2e-2  # shown, untouched: still the preset
    assert sources["config"]["r"] == "preset" and run.config["config"]["r"] == 4
    assert sources["settings"]["eval_every"] == "task" and sources["settings"]["seed"] == "default"
    assert run.config["preset"] == {"task": "synthetic:*", "reason": "a test preset."}
    assert "preset for `synthetic:*`" in cb.job_status(job.id)
    # typing the shown value again is no edit
    job = wait(start("synthetic:mixed", "lora", tmp_path, settings={"steps": 6, "lr": "0.02"}, config={"r": "4"}))
    assert job.run.config["sources"]["settings"]["lr"] == "preset"
    assert job.run.config["sources"]["config"]["r"] == "preset"


def test_bad_training_input_starts_nothing(tmp_path):
    # a bound that depends on the task's layers is checked in the job, which builds the task (issue 16: never in
    # the request): the job fails at once with the message naming the field, and nothing is saved
    job = wait(start("synthetic:lowrank", "lora", tmp_path, config={"r": 65}))  # larger than the 64x64 layers
    assert job.run is None and job.error is not None
    assert "lora: r=65 is invalid; r must be an integer in [1, 64] for layer" in cb.job_status(job.id)
    before = len(jobs._JOBS)
    bad_train = [({"config": {"r": 0}}, r"lora: r=0 is invalid; r must be an integer in \[1, "),
                 ({"settings": {"steps": "ten"}}, r"train: steps='ten' is invalid; steps must be integer in \[1, "),
                 ({"settings": {"steps": "0"}}, r"train: steps=0 is invalid; steps must be an integer in \[1, "),
                 ({"settings": {"lr": "-1"}}, r"lr=-1.0 is invalid; lr must be a number in \(0, inf\)"),
                 ({"settings": {"lr_schedule": "cosin"}}, "lr_schedule must be one of 'constant', 'linear'"),
                 ({"options": {"layout": "tree"}}, "layout must be one of 'chain', 'parallel'"),
                 ({"options": {"noise": "lots"}}, r"synthetic:lowrank: noise='lots' is invalid; noise must be number")]
    for edits, message in bad_train:
        with pytest.raises(wb.ConfigError, match=message):
            start("synthetic:lowrank", "lora", tmp_path, **edits)
    renamed = cb.task_options_form("synthetic:mixed")
    renamed.loc[renamed.field == "layout", "field"] = "layot"
    with pytest.raises(wb.ConfigError, match=r"synthetic:mixed: unknown option key 'layot'; did you mean 'layout'"):
        cb.start_comparison("synthetic:mixed", ["lora"], "0", "", "sweep", str(tmp_path), renamed)
    with pytest.raises(wb.ConfigError, match="choose at least one variant"):
        cb.start_comparison("synthetic:lowrank", [], "0", "10", "0.01", str(tmp_path))
    with pytest.raises(wb.ConfigError, match="seeds"):
        cb.start_comparison("synthetic:lowrank", ["lora"], "one", "10", "0.01", str(tmp_path))
    with pytest.raises(wb.ConfigError, match=r"train: steps='abc' is invalid; steps must be integer in \[1, "):
        cb.start_comparison("synthetic:lowrank", ["lora"], "0", "abc", "sweep", str(tmp_path))
    with pytest.raises(wb.ConfigError, match=r"train: lr=0.0 is invalid; lr must be a number in \(0, inf\)"):
        cb.start_comparison("synthetic:lowrank", ["lora"], "0", "", "0", str(tmp_path))
    assert len(jobs._JOBS) == before
    assert cb.runs_table(str(tmp_path)).empty


def test_training_job_streams_saves_and_is_inspectable(tmp_path):
    root = str(tmp_path)
    job_id = start("synthetic:lowrank", "lora", root, settings={"steps": 60, "every": 10})
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
    job = wait(start("synthetic:mixed", "lora", root, settings={"steps": 20}, options={"layout": "parallel",
                                                                                       "noise": 0.05}))
    assert job.error is None and job.run.status == "completed"
    (run_id,) = cb.run_choices(root)
    saved = cb.load_run(root, run_id)
    assert saved.config["task_options"]["layout"] == "parallel" and saved.config["task_options"]["noise"] == 0.05
    task = cb.task_of(saved)
    assert task.options()["layout"] == "parallel" and task.model()(torch.randn(2, 64)).shape == (2, 6 * 64)
    fig, text = cb.compute_landscape(root, run_id, "delta", "1", "3", "0.5")  # rebuilt on the parallel task
    assert "sharpness" in text


def test_two_jobs_at_once_do_not_mix(tmp_path):
    a = start("synthetic:lowrank", "lora", tmp_path, settings={"steps": 40})
    b = start("synthetic:fullrank", "dora", tmp_path, settings={"steps": 40, "seed": 1})
    ja, jb = wait(a), wait(b)
    assert (ja.run.task, ja.run.variant) == ("synthetic:lowrank", "lora")
    assert (jb.run.task, jb.run.variant) == ("synthetic:fullrank", "dora")
    assert len(cb.runs_table(str(tmp_path))) == 2
    assert len(cb.runs_table(str(tmp_path), "dora")) == 1


def test_stop_and_worker_errors_are_reported(tmp_path, monkeypatch):
    job_id = start("synthetic:lowrank", "lora", tmp_path, settings={"steps": 20000})
    time.sleep(0.3)
    cb.stop_job(job_id)
    assert wait(job_id).run.status == "stopped"

    def boom(*args, **kwargs):
        raise RuntimeError("worker exploded")

    monkeypatch.setattr(cb, "train", boom)
    failed = start("synthetic:lowrank", "lora", tmp_path, settings={"steps": 10})
    wait(failed)
    assert "worker exploded" in cb.job_status(failed)


def test_diverging_training_is_reported(tmp_path):
    job = wait(start("synthetic:lowrank", "lora", tmp_path, settings={"steps": 50, "lr": 1e3, "every": 5}))
    assert job.run.status == "diverged"
    assert "diverged" in cb.job_status(job.id) and "smaller learning rate" in cb.job_status(job.id)


def test_comparison_job(tmp_path):
    job = wait(cb.start_comparison("synthetic:lowrank", ["lora", "full"], "0, 1", "20", "0.01", str(tmp_path)))
    assert job.error is None and len(job.runs) == 4
    summary, runs, sweep, loss, spectra, alloc, freq = cb.comparison_view(job.id, "layers.0")
    assert len(runs) == 4 and list(summary.variant) == ["lora", "full"] and sweep.empty
    assert "4 runs started, 4 finished" in cb.comparison_status(job.id)


def test_comparison_passes_steps_only_when_given(tmp_path, monkeypatch):
    """A blank steps box leaves the length to compare() (the task's default); 'sweep' is the rate by default."""
    calls = []
    monkeypatch.setattr(cb, "compare", lambda task, variants, **kw: calls.append(kw))
    wait(cb.start_comparison("synthetic:lowrank", ["lora"], "0", "", "sweep", str(tmp_path)))
    wait(cb.start_comparison("synthetic:lowrank", ["lora"], "0", " 40 ", "0.003", str(tmp_path)))
    assert "steps" not in calls[0] and calls[0]["lr"] == "sweep"
    assert calls[1]["steps"] == 40 and calls[1]["lr"] == 0.003


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


def test_learn_card_lists_the_presets_and_marks_the_one_for_the_task(lora_preset):
    text = cb.learn_card("lora", "synthetic:mixed")
    (row,) = [line for line in text.splitlines() if line.startswith("| `synthetic:*`")]
    assert "✓" in row and "config `r=4`" in row and "training `lr=0.02`" in row and "a test preset." in row
    bare = next(v.name for v in wb.variant_infos() if not wb.get_variant(v.name).presets)
    assert "**Presets**" not in cb.learn_card(bare, "synthetic:mixed")  # no presets: no section


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


def test_learn_has_a_card_for_every_recipe_from_its_declaration():
    # issue 18: the Learn tab offers the recipes; each card names the paper, whether it needs factors and every option
    from workbench.dashboard.learn import recipe_card

    for info in wb.recipes():
        card = recipe_card(info.name)
        assert info.name in card and (info.paper in card if info.paper else True)
        for f in info.config.fields_info():
            assert f"`{f['name']}`" in card
        assert ("factors" in card) == info.needs_factors or "any variant" in card
    assert recipe_card("no-such-recipe") == ""
