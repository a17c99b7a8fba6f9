"""compare(): budget matching, sweeps, seeds; the command line; the demo report."""

from __future__ import annotations

import copy
import pickle
import sys
import warnings

import pytest
import torch
from conftest import TinyTask, tiny_model
from torch import nn

import workbench as wb
from workbench.budget import BudgetWarning, _size_field, config_for_budget, count_params, match_budget
from workbench.cli import main


class HeadTask(TinyTask):
    """TinyTask read through a frozen, non-adapted 32→2 head after the two targets (as text:sst2's 384→2
    classifier): the targets are still "0" and "2"."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.head = nn.Linear(32, 2).requires_grad_(False)
        with torch.no_grad():
            self.y = self.head(self.y)

    def model(self) -> nn.Module:
        return nn.Sequential(*tiny_model(), copy.deepcopy(self.head))


def test_budget_matching_picks_the_closest_rank():
    task = TinyTask()
    # LoRA on 32→64 and 64→32 layers costs r·(32+64)·2 = 192 r parameters
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within one step of r: no budget warning
        match = match_budget(task, "lora", 192 * 5 + 10)
    assert (match.field, match.value, match.reached, match.step) == ("r", 5, 960, 192) and not match.missed
    assert config_for_budget(task, "lora", 192 * 5 + 10) == {"r": 5}
    assert count_params(task, "lora", **match.config) == 960
    assert config_for_budget(task, "full", 100) == {}  # nothing to tune: used as it is


def test_a_non_adapted_head_does_not_cap_the_size_field():
    task = HeadTask()
    assert task.model()[3].out_features == 2  # counting every linear layer would cap r at 2
    assert match_budget(task, "lora", 192 * 5 + 10).config == {"r": 5}
    assert match_budget(task, "lora", 192 * 20).value == 20  # up to the targets' own cap, min(32, 64) = 32


def test_compare_trains_each_variant_at_the_matched_budget():
    cmp = wb.compare(HeadTask(), ["lora", "dora"], budget=192 * 5 + 10, lr=1e-2, steps=5, probes=())
    assert cmp.table.set_index("variant").trainable_params.to_dict() == {"lora": 960, "dora": 96 + 960}


def test_a_budget_beyond_the_size_fields_reach_warns():
    with pytest.warns(BudgetWarning, match=r"lora: budget=100,000 not reached .* r=32 gives 6,144 trainable"):
        match = match_budget(HeadTask(), "lora", 100_000)
    assert match.missed and match.limit == "highest" and (match.value, match.reached) == (32, 6144)  # r ≤ min(32, 64)
    with pytest.warns(BudgetWarning, match="exceeded .* 1 is the lowest r"):  # DoRA's magnitudes (96) cost more
        assert match_budget(TinyTask(), "dora", 10).value == 1
    with pytest.warns(BudgetWarning, match="not reached .* 1 is the lowest r"):  # RandLoRA's count falls with r
        assert match_budget(TinyTask(), "randlora", 5000, alpha=160.0).reached == 2112
    # RandLoRA's sawtooth (SAWTOOTH below): r = 16 gives 192 exactly, but the search near its crossing finds only
    # r = 29 (244); the miss is reported, with the reason, rather than passed off as the closest value
    with pytest.warns(BudgetWarning, match="not monotone in r"):
        assert not match_budget(TinyTask(), "randlora", 192, alpha=160.0).at_limit


#: nothing a budget can size at adapt(): full trains every entry, and sft is full fine-tuning until its mask of K
#: entries is chosen (phase 2), so the count at adapt() does not move with K
UNSIZED = ["full", "sft"]
SIZED = [n for n in wb.variant_names() if n not in UNSIZED]
#: counts monotone only at a coarser scale than one unit of the size field, with the reason
SAWTOOTH = {"randlora": "ceil(d/r) bases of r + d parameters each: the count falls with r, rising within each run "
                        "of r that keeps the same number of bases"}


def test_only_full_fine_tuning_has_nothing_to_size():
    unsized = [n for n in wb.variant_names() if _size_field(n) is None]
    assert unsized == UNSIZED, f"variants without a size field for compare(budget=...): {unsized}"


def _monotone(seq) -> bool:
    return seq == sorted(seq) or seq == sorted(seq, reverse=True)


@pytest.mark.parametrize("name", SIZED)
def test_every_size_field_moves_the_count_monotonically_and_is_matched(name):
    """The size field is an integer option whose trainable-parameter count on TinyTask changes monotonically over
    1 … 32 (every rank these layers allow) and the example value, and matching the budget that the example value
    gives finds a value that gives exactly that count."""
    task, cls = TinyTask(), wb.get_variant(name)
    field = _size_field(name)
    info = next(f for f in cls.Config.fields_info() if f["name"] == field)
    assert info["type"] == "int", f"{name}: size field {field} is {info['type']}"
    anchor = cls.example_config.get(field, info["default"])
    counts = {}
    for v in sorted({*range(1, 33), anchor}):
        try:
            counts[v] = count_params(task, name, **{**cls.example_config, field: v})
        except wb.ConfigError:
            pass
    seq = list(counts.values())
    assert len(set(seq)) > 1, f"{name}: {field} does not change the trainable-parameter count {counts}"
    if name in SAWTOOTH:  # monotone at powers of two only
        assert _monotone([c for v, c in counts.items() if v & (v - 1) == 0]), counts
    else:
        assert _monotone(seq), f"{name}: count not monotone in {field}: {counts}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        match = match_budget(task, name, counts[anchor], **cls.example_config)
    assert match.reached == counts[anchor] and counts[match.value] == counts[anchor]


def test_sweep_picks_the_best_rate_on_validation_and_reuses_it():
    task = TinyTask()
    cmp = wb.compare(task, ["lora"], steps=15, lrs=(1e-4, 3e-2), seeds=(0, 1), probes=())
    sweep = cmp.sweep.set_index("lr")
    best = sweep.metric_value.idxmin()
    assert cmp.best_lr["lora"] == best
    assert list(cmp.table.seed) == [0, 1] and set(cmp.table.lr) == {best}
    assert cmp.table.run_id[0] in set(cmp.sweep.run_id)  # seed 0 at the best rate was not trained twice
    summary = cmp.summary()
    assert summary.loc[0, "variant"] == "lora" and "metric_value_std" in summary


def test_compare_errors():
    with pytest.raises(wb.ConfigError, match="variants is empty"):
        wb.compare(TinyTask(), [], steps=5)
    with pytest.raises(wb.ConfigError, match="did you mean 'lora'"):
        wb.compare(TinyTask(), ["lroa"], steps=5)
    with pytest.raises(wb.ConfigError, match="executor"):
        wb.compare(TinyTask(), ["lora"], steps=5, executor="spark")


class FakeRay:
    """Ray's API as compare() uses it, in process: each task's arguments and result cross a pickle round trip, as
    they would cross to a Ray worker, so what cannot travel to a cluster fails here."""

    def __init__(self):
        self.started, self.calls = False, 0

    def is_initialized(self):
        return self.started

    def init(self, **kwargs):  # compare() passes address= and runtime_env=
        self.started, self.init_kwargs = True, kwargs

    def put(self, obj):  # the object store: one pickled copy, read by every task
        self.puts = getattr(self, "puts", 0) + 1
        return pickle.dumps(obj)

    def remote(self, fn):
        fake = self

        class Handle:
            @staticmethod
            def remote(*args):
                fake.calls += 1
                task, *rest = args  # the first argument is the task's object-store reference
                return pickle.dumps(fn(pickle.loads(task), *pickle.loads(pickle.dumps(rest))))

        return Handle

    @staticmethod
    def get(refs):
        return [pickle.loads(r) for r in refs]


def test_ray_executor_runs_each_training_as_a_task(tmp_path, monkeypatch):
    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    store = wb.RunStore(tmp_path)
    cmp = wb.compare(TinyTask(), ["lora", "dora"], steps=10, lrs=(1e-3, 1e-2), lr="sweep", seeds=(0, 1),
                     probes=(), store=store, executor="ray")
    assert ray.started and ray.calls == 2 * 2 + 2  # the sweep at seed 0, then seed 1 at each best rate
    assert ray.puts == 1 and "WORKBENCH_CACHE" in ray.init_kwargs["runtime_env"]["env_vars"]  # the task once
    assert list(cmp.table.variant) == ["lora", "lora", "dora", "dora"] and list(cmp.table.seed) == [0, 1, 0, 1]
    assert all(run.adaptation is None and run.status == "completed" for run in cmp.runs)
    assert len(store.list()) == 6  # the adapters are kept through the (shared) store
    restored = store.load(cmp.runs[1].id).restore(TinyTask())
    assert restored.num_trainable() > 0


def test_ray_executor_without_ray_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(wb.ConfigError, match=r"executor='ray' needs the 'ray' package \(pip install ray\)"):
        wb.compare(TinyTask(), ["lora"], steps=5, executor="ray")


def test_cli_run_list_and_runs(tmp_path, capsys):
    assert main(["list"]) == 0
    assert "lora" in capsys.readouterr().out
    assert main(["run", "synthetic:lowrank", "lora", "--steps", "20", "--set", "r=2", "alpha=4.0",
                 "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "completed" in out and "512 trainable params" in out  # 2 layers x r(64+64), r=2
    assert main(["runs", "--runs", str(tmp_path)]) == 0
    assert "synthetic:lowrank" in capsys.readouterr().out


def test_cli_docs_rewrites_the_generated_files_and_checks_them(tmp_path, capsys):
    from workbench.docs import README_END, README_START

    (tmp_path / "README.md").write_text(f"# hand-written\n{README_START}\nold table\n{README_END}\nmore\n")
    assert main(["docs", "--check", "--root", str(tmp_path)]) == 2
    assert "stale generated docs: docs/VARIANTS.md, docs/SETTINGS.md, README.md" in capsys.readouterr().err
    assert main(["docs", "--root", str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("# hand-written\n") and readme.endswith(f"{README_END}\nmore\n")
    assert "old table" not in readme and f"{len(wb.variant_names())} variants" in readme
    assert (tmp_path / "docs" / "VARIANTS.md").exists() and (tmp_path / "docs" / "SETTINGS.md").exists()
    assert main(["docs", "--check", "--root", str(tmp_path)]) == 0


def test_cli_reports_bad_input_without_a_traceback(capsys):
    assert main(["run", "synthetic:lowrank", "lora", "--steps", "5", "--set", "r=0"]) == 2
    assert "r=0 is invalid" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_writes_a_self_contained_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo.html"), "--steps", "20"]) == 0
    html = (tmp_path / "demo.html").read_text()
    assert html.count("plotly") > 5 and "Singular values" in html
    assert "<script src=" not in html and len(html) > 1_000_000  # plotly.js is embedded: works offline
    assert "pissa" in capsys.readouterr().out


class _DefaultsTask(TinyTask):
    defaults = {"steps": 9, "lr": 2e-3, "every": 3}


def test_compare_uses_task_defaults_presets_and_sweeps_around_the_variants_rate(monkeypatch):
    lora = wb.get_variant("lora")
    monkeypatch.setattr(lora, "presets", (wb.Preset("tiny", config={"r": 2}, settings={"lr": 5e-3}, reason="t"),))
    result = wb.compare(_DefaultsTask(), ["lora", "dora"], seeds=(0,), probes=())
    sweep = result.sweep
    assert sorted(sweep[sweep.variant == "lora"].lr) == pytest.approx([5e-3 * f for f in (0.3, 1.0, 3.0)])
    assert sorted(sweep[sweep.variant == "dora"].lr) == pytest.approx([2e-3 * f for f in (0.3, 1.0, 3.0)])
    for run in result.runs:
        assert run.config["steps"] == 9 and run.config["sources"]["settings"]["steps"] == "task"
    lora_run = next(r for r in result.runs if r.variant == "lora")
    assert lora_run.config["config"]["r"] == 2 and lora_run.config["sources"]["config"]["r"] == "preset"
    matched = wb.compare(_DefaultsTask(), ["lora"], lr=1e-3, budget=4 * 192, probes=())  # r·(32+64+64+32)
    assert matched.runs[0].config["config"]["r"] == 4 and matched.runs[0].summary["trainable_params"] == 768
