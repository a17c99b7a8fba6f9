"""digits-family:rotate: the digits task at a rotation angle, as a family for ICM-LoRA's collect / fit / generate."""

from __future__ import annotations

import math

import pytest
import torch

import workbench as wb
from workbench import generate as gen
from workbench.tasks.digits import _digits, _held_out, _split
from workbench.tasks.digits_family import rotate_images, rotation_matrix

FAMILY = "digits-family:rotate"
TRAIN = {"steps": 20, "lr": 1e-2, "r": 2, "every": 10, "batch_size": 32}
SMALL_CVAE = {"blocks": 2, "channels": 4, "latent": 4, "embed": 4, "steps": 60, "lr": 3e-3}


@pytest.fixture(scope="module")
def collection():
    return gen.collect(FAMILY, [30, 60], keep=2, **TRAIN)


@pytest.fixture(scope="module")
def generator(collection):
    return gen.fit_generator(collection, **SMALL_CVAE)


# -- the family task -----------------------------------------------------------------------------------------------
def test_angle_90_is_digits_rotate_and_every_angle_shares_the_model():
    member, rotate = wb.tasks.get(FAMILY, angle=90), wb.tasks.get("digits:rotate")
    for split in ("train", "val", "test"):
        assert torch.equal(member._data[split][0], rotate._data[split][0])
        assert torch.equal(member._data[split][1], rotate._data[split][1])
    assert member.targets == rotate.targets and member.metric == "accuracy"
    other = wb.tasks.get(FAMILY, angle=35).model().state_dict()
    for k, v in rotate.model().state_dict().items():
        assert torch.equal(other[k], v)
    # the same data seed gives the same digits in each split at every angle (only the rotation differs)
    seeded = wb.tasks.get(FAMILY, angle=90, seed=3), wb.tasks.get("digits:rotate", seed=3)
    assert torch.equal(seeded[0]._data["test"][0], seeded[1]._data["test"][0])
    assert not torch.equal(seeded[0]._data["test"][0], member._data["test"][0])


def test_angle_0_is_the_upright_source_domain():
    images, labels = _digits()
    train_idx, held = _split(len(images))
    _, test_idx = _held_out(held, 0)
    upright = wb.tasks.get(FAMILY, angle=0)
    assert torch.equal(upright._data["train"][0], images[train_idx])
    assert torch.equal(upright._data["test"][0], images[test_idx])
    assert torch.equal(upright._data["test"][1], labels[test_idx])


def test_rotation_turns_the_image_about_its_centre():
    assert torch.equal(rotation_matrix(180.0), torch.rot90(torch.eye(64).view(64, 8, 8), 2, dims=(1, 2))
                       .reshape(64, 64).t())
    ys, xs = torch.meshgrid(torch.arange(8.0) - 3.5, torch.arange(8.0) - 3.5, indexing="ij")
    blob = torch.exp(-((ys - 0.0) ** 2 + (xs - 2.0) ** 2) / 0.8)[None]  # right of centre
    for angle in (20.0, 45.0, 70.0):
        out = rotate_images(blob, angle)[0]
        cy, cx = float((out * ys).sum() / out.sum()), float((out * xs).sum() / out.sum())
        th = math.radians(angle)  # counter-clockwise on screen: rows grow downwards, so up is -y
        assert cy == pytest.approx(-2.0 * math.sin(th), abs=0.15) and cx == pytest.approx(2.0 * math.cos(th),
                                                                                            abs=0.15)
        assert float(out.sum()) == pytest.approx(float(blob.sum()), rel=0.05)  # the blob stays inside the image


def test_the_task_gets_harder_with_the_angle_for_the_upright_model():
    model = wb.tasks.get(FAMILY).model()
    acc = [wb.tasks.get(FAMILY, angle=a).evaluate(model, split="test")["accuracy"] for a in (0, 30, 60)]
    assert acc[0] > 0.9 and acc[0] > acc[1] > acc[2]


def test_options_are_validated_and_round_trip():
    with pytest.raises(wb.ConfigError, match=r"angle=200 is invalid; angle must be a number in \[0, 180\]"):
        wb.tasks.get(FAMILY, angle=200)
    with pytest.raises(wb.ConfigError, match="unknown option key 'stage'"):
        wb.tasks.get(FAMILY, stage=0)
    task = wb.tasks.get(FAMILY, angle=22.5, seed=2)
    again = wb.tasks.get(task.name, **task.options())
    assert again.options() == task.options() == {"seed": 2, "angle": 22.5} and again.angle == 22.5
    assert FAMILY in wb.tasks.names() and "angle" in wb.tasks.option_names(FAMILY)


# -- collect, fit, generate ----------------------------------------------------------------------------------------
def test_collect_conditions_on_the_angle(collection):
    assert collection.condition == "angle" and collection.conditions() == [30.0, 60.0]
    assert len(collection.checkpoints) == 4
    for run in collection.runs:
        assert run.task == FAMILY and run.config["task_options"]["angle"] in (30.0, 60.0)
    assert collection.task_at(45).angle == 45.0


def test_generated_lora_passes_through_the_model_and_is_scored(generator, tmp_path):
    task = generator.task_at(45)
    ad = gen.generate(generator, task.model(), 45)
    assert ad.generated["condition"] == {"angle": 45.0} and ad.generated["extrapolated"] is False
    images = task._data["test"][0][:16]
    with torch.no_grad():
        out = ad.model(images)
        plain = task.model()(images)
    assert out.shape == (16, 10) and torch.isfinite(out).all() and not torch.allclose(out, plain)
    for _, layer in ad.named_layers():
        xin = torch.randn(3, 5, layer.in_features)
        torch.testing.assert_close(layer(xin), layer.base(xin) + xin @ layer.delta_weight().t(), atol=1e-5, rtol=1e-4)
    store = wb.RunStore(tmp_path / "runs")
    run = gen.generate_run(generator, 45, store=store, probes=None)
    assert run.config["task_options"]["angle"] == 45.0 and run.summary["metric"] == "accuracy"
    back = store.load(run.id).restore()
    acc = task.evaluate(back.model)["accuracy"]
    assert 0.0 <= acc <= 1.0 and run.summary["metric_value"] == pytest.approx(acc, abs=1e-6)


def test_angle_outside_the_trained_range_is_refused_or_flagged(generator):
    model = generator.task_at(60).model()
    with pytest.raises(wb.ConfigError, match=r"angle=75 is outside.*angle must be a number in \[30, 60\]"):
        gen.generate(generator, model, 75)
    with pytest.raises(wb.ConfigError, match=r"angle=10 is outside"):
        gen.generate_run(generator, 10)
    ad = gen.generate(generator, model, 75, extrapolate=True)
    assert ad.generated["extrapolated"] is True
    with pytest.raises(wb.ConfigError, match=r"angle=190 is invalid"):
        gen.generate_run(generator, 190, extrapolate=True)  # past the task's own range
