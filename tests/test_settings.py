"""TrainSettings, task defaults, presets and their merge: the one declaration of training settings (issues 11, 12)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TinyTask

import workbench as wb
from workbench.settings import Preset, TrainSettings, resolve, split_overrides
from workbench.train import train


class DefaultsTask(TinyTask):
    defaults = {"steps": 12, "lr": 3e-3, "every": 4}


def test_flat_keywords_are_sorted_into_settings_and_config():
    settings, config = split_overrides(wb.get_variant("lora"), {"steps": 5, "lr": 1e-3, "r": 2, "alpha": 2.0})
    assert settings == {"steps": 5, "lr": 1e-3} and config == {"r": 2, "alpha": 2.0}


def test_a_name_that_is_both_a_setting_and_a_config_field_must_be_disambiguated():
    # SoRA has its own weight_decay (for the gates): a flat weight_decay= once set the loop's and silently left
    # SoRA's at 0.1
    with pytest.raises(wb.ConfigError, match="both a training setting and a sora config field.*config="):
        train(TinyTask(), "sora", steps=2, probes=(), progress=False, weight_decay=0.5)
    run = train(TinyTask(), "sora", steps=2, probes=(), progress=False, config={"weight_decay": 0.5})
    assert run.config["config"]["weight_decay"] == 0.5 and run.config["weight_decay"] == 0.0
    run = train(TinyTask(), "sora", steps=2, probes=(), progress=False, settings={"weight_decay": 0.3})
    assert run.config["weight_decay"] == 0.3 and run.config["config"]["weight_decay"] == 0.1


def test_task_defaults_apply_and_explicit_values_win_with_sources_recorded():
    run = train(DefaultsTask(), "lora", probes=(), progress=False, r=2)
    assert run.config["steps"] == 12 and run.config["lr"] == 3e-3
    src = run.config["sources"]
    assert src["settings"]["steps"] == "task" and src["settings"]["batch_size"] == "default"
    assert src["config"]["r"] == "explicit" and src["config"]["alpha"] == "default"
    run = train(DefaultsTask(), "lora", probes=(), progress=False, steps=3, lr=1e-2)
    assert run.config["steps"] == 3 and run.config["lr"] == 1e-2 and run.summary["steps_done"] == 3
    assert run.config["sources"]["settings"]["lr"] == "explicit"


def test_a_preset_sits_between_task_defaults_and_explicit_values(monkeypatch):
    lora = wb.get_variant("lora")
    monkeypatch.setattr(lora, "presets", (Preset("tiny", config={"r": 3}, settings={"lr": 5e-3}, reason="test"),
                                          Preset("ti*", config={"r": 1}, reason="less specific")))
    r = resolve(DefaultsTask(), lora)
    assert r.config == {"r": 3} and r.settings.lr == 5e-3 and r.settings.steps == 12
    assert r.sources["config"]["r"] == "preset" and r.sources["settings"]["lr"] == "preset"
    assert r.sources["settings"]["steps"] == "task"
    r = resolve(DefaultsTask(), lora, {"lr": 1e-1}, {"r": 4})
    assert r.config == {"r": 4} and r.settings.lr == 1e-1
    assert resolve(DefaultsTask(), lora, use_presets=False).config == {}
    run = train(DefaultsTask(), "lora", probes=(), progress=False)
    assert run.config["config"]["r"] == 3 and run.config["preset"] == {"task": "tiny", "reason": "test"}


@pytest.mark.parametrize("kw,match", [({"steps": 0}, r"train: steps=0 is invalid; steps must be an integer in \[1"),
                                      ({"lr": -1.0}, r"lr=-1.0 is invalid; lr must be a number in \(0, inf\)"),
                                      ({"lr_schedule": "cosin"}, "lr_schedule must be one of 'constant'"),
                                      ({"lr_warmup": 0.9}, r"lr_warmup must be a number in \[0, 0.5\]"),
                                      ({"eval_every": 0}, "eval_every=0 is invalid"),
                                      ({"recipe": "adamx"}, "unknown recipe 'adamx'"),
                                      ({"stpes": 3}, "unknown setting key 'stpes'; did you mean 'steps'")])
def test_bad_settings_name_the_field_and_the_range(kw, match):
    with pytest.raises(wb.ConfigError, match=match):
        resolve(TinyTask(), wb.get_variant("lora"), kw)


def test_an_unknown_flat_keyword_is_reported_as_a_config_key():
    with pytest.raises(wb.ConfigError, match="lora: unknown config key 'stesp'"):
        train(TinyTask(), "lora", stesp=3, probes=(), progress=False)


def test_text_values_parse_through_the_one_parser():
    assert TrainSettings.from_strings({"steps": "30", "lr": "1e-3", "max_grad_norm": "none", "recipe": "none"}) == {
        "steps": 30, "lr": 1e-3, "max_grad_norm": None, "recipe": None}
    with pytest.raises(wb.ConfigError, match="steps='3.5' is invalid; steps must be integer"):
        TrainSettings.from_strings({"steps": "3.5"})


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedule_warms_up_then_decays(schedule):
    s = TrainSettings(steps=20, lr=1e-2, lr_schedule=schedule, lr_warmup=0.25)
    factors = [s.lr_factor(i) for i in range(20)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    if schedule == "constant":
        assert factors[5:] == pytest.approx([1.0] * 15)
    else:
        assert all(a >= b for a, b in zip(factors[5:], factors[6:])) and factors[-1] < 0.15


def test_the_loop_sets_each_steps_rate_from_the_schedule(monkeypatch):
    rates = []
    original = torch.optim.AdamW.step

    def spy(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    train(TinyTask(), "lora", steps=10, lr=1e-2, lr_schedule="linear", lr_warmup=0.2, probes=(), progress=False)
    expected = [TrainSettings(steps=10, lr=1e-2, lr_schedule="linear", lr_warmup=0.2).lr_factor(i) * 1e-2
                for i in range(10)]
    assert rates == pytest.approx(expected)


def test_validation_runs_on_its_own_cadence():
    # eval_every once sat inside the probe check, so train(steps=100, every=10) evaluated at 0 and 100 only
    run = train(TinyTask(), "lora", steps=100, every=10, eval_every=25, probes=(), progress=False)
    m = run.metrics
    steps = sorted(m[(m.probe == "eval") & (m.key == "loss")].step.unique().tolist())
    assert steps == [0, 25, 50, 75, 100]
    run = train(TinyTask(), "lora", steps=100, every=7, probes=(), progress=False)  # unset: ten a run
    m = run.metrics
    assert len(m[(m.probe == "eval") & (m.key == "loss")].step.unique()) == 11


def test_hooks_get_the_runs_length_not_a_guess():
    seen = []
    lora = wb.get_variant("lora")

    class Spy(lora):
        def on_step(self, ctx):
            seen.append((ctx.step, ctx.total_steps, ctx.optimizer is not None, ctx.batch is not None))

    Spy.name, Spy.Config = "lora", lora.Config
    train(TinyTask(), Spy, steps=7, probes=(), progress=False)
    assert seen == [(i, 7, True, True) for i in range(7)]


def test_nan_learning_rate_is_accepted_and_diverges():
    run = train(TinyTask(), "lora", steps=10, lr=math.nan, probes=(), progress=False)
    assert run.status == "diverged"


def test_numpy_numbers_are_numbers():
    import numpy as np

    run = train(TinyTask(), "lora", steps=np.int64(3), seed=np.arange(3)[2], lr=np.float32(1e-2), probes=(),
                progress=False)
    assert run.summary["steps_done"] == 3 and run.config["seed"] == 2
    with pytest.raises(wb.ConfigError, match="lr_warmup=nan"):
        resolve(TinyTask(), wb.get_variant("lora"), {"lr": 1.0, "lr_warmup": np.float64("nan")})
