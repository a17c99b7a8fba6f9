"""Tasks: determinism, frozen models, a correct known truth, the structures they advertise, clear errors."""

from __future__ import annotations

import math

import pytest
import scipy.fft
import scipy.linalg
import torch

import workbench as wb


def _apply_truth(task):
    model = task.model()
    with torch.no_grad():
        for name, delta in task.reference_delta().items():
            model.get_submodule(name).weight.add_(delta)
    return model


@pytest.mark.parametrize("structure", ["lowrank", "fullrank", "dct", "wht", "sparse", "lowrank+sparse", "mixed"])
def test_synthetic_truth_is_exact_and_base_is_not(structure):
    task = wb.tasks.get(f"synthetic:{structure}")
    assert 0.2 < task.evaluate(task.model())["rel_error"] < 0.8  # there is something to learn
    assert task.evaluate(_apply_truth(task))["rel_error"] < 1e-10  # and the reference ΔW is exactly it


def test_synthetic_is_deterministic_and_frozen():
    a, b = wb.tasks.get("synthetic:lowrank"), wb.tasks.get("synthetic:lowrank")
    for (na, pa), (nb, pb) in zip(a.model().named_parameters(), b.model().named_parameters()):
        assert na == nb and torch.equal(pa, pb) and not pa.requires_grad
    ba, bb = next(a.batches(seed=3)), next(b.batches(seed=3))
    assert torch.equal(ba["x"], bb["x"])
    assert not torch.equal(next(a.batches(seed=4))["x"], ba["x"])
    assert not wb.tasks.get("synthetic:lowrank", seed=1).reference_delta()["layers.0"].equal(
        a.reference_delta()["layers.0"])


def test_structures_are_what_they_claim():
    d = wb.tasks.get("synthetic:lowrank", rank=3).reference_delta()["layers.0"]
    assert torch.linalg.matrix_rank(d) == 3
    full = wb.tasks.get("synthetic:fullrank").reference_delta()["layers.0"]
    assert torch.linalg.matrix_rank(full) == 64
    n = 40
    dct = wb.tasks.get("synthetic:dct", n_coefficients=n).reference_delta()["layers.0"]
    coeffs = scipy.fft.dctn(dct.double().numpy(), norm="ortho")
    assert (abs(coeffs) > 1e-6).sum() == n
    wht = wb.tasks.get("synthetic:wht", n_coefficients=n).reference_delta()["layers.0"].double()
    h = torch.from_numpy(scipy.linalg.hadamard(64)).double() / 8
    assert int(((h @ wht @ h).abs() > 1e-6).sum()) == n
    sparse = wb.tasks.get("synthetic:sparse", n_coefficients=n).reference_delta()["layers.0"]
    assert int((sparse != 0).sum()) == n


def test_mixed_has_the_advertised_ranks():
    task = wb.tasks.get("synthetic:mixed")
    ranks = task.true_ranks()
    assert sorted(ranks.values()) == [0, 1, 2, 4, 8, 16]
    for name, delta in task.reference_delta().items():
        assert int(torch.linalg.matrix_rank(delta)) == ranks[name]


def test_parallel_layout_judges_each_layer_on_its_own_update():
    task = wb.tasks.get("synthetic:mixed", layout="parallel")
    model, x = task.model(), torch.randn(5, 64)
    with torch.no_grad():
        expected = torch.cat([model.layers[i](x) for i in range(6)], dim=-1)  # side by side on the same input
        torch.testing.assert_close(model(x), expected)
    assert task.evaluate(model)["rel_error"] > 0.01
    assert task.evaluate(_apply_truth(task))["rel_error"] < 1e-10
    assert task.true_ranks() == wb.tasks.get("synthetic:mixed").true_ranks()  # the same six updates
    with pytest.raises(wb.ConfigError, match="layout must be one of 'chain', 'parallel'"):
        wb.tasks.get("synthetic:mixed", layout="tree")


def test_bad_names_and_options_are_config_errors():
    with pytest.raises(wb.ConfigError, match="did you mean 'synthetic:lowrank'"):
        wb.tasks.get("synthetic:lowrnak")
    with pytest.raises(wb.ConfigError, match=r"dim=2 is invalid; dim must be an integer in \[4, 1024\]"):
        wb.tasks.get("synthetic:lowrank", dim=2)
    with pytest.raises(wb.ConfigError, match="power of two"):
        wb.tasks.get("synthetic:wht", dim=48)
    with pytest.raises(wb.ConfigError, match="synthetic:lowrank: unknown option key 'dimm'; did you mean 'dim'"):
        wb.tasks.get("synthetic:lowrank", dimm=8)
    assert "text:sst2" in wb.tasks.names() and "digits:continual" in wb.tasks.names()


@pytest.mark.slow
def test_digits_pretrained_on_source_and_shifted_target():
    task = wb.tasks.get("digits:rotate")
    model = task.model()
    assert task.source_accuracy(model) > 0.9
    assert task.evaluate(model)["accuracy"] < 0.5
    again = task.model()  # from the cache: identical weights
    for (_, a), (_, b) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b)
    classes = wb.tasks.get("digits:classes")
    assert classes.evaluate(classes.model())["accuracy"] < 0.05  # it never saw 5-9
    assert "head" in classes.targets


@pytest.mark.slow
def test_digits_continual_reports_every_stage():
    stages = wb.tasks.get("digits:continual").stages()
    assert [s.current for s in stages] == ["rotate", "invert", "classes"]
    result = stages[0].evaluate(stages[0].model())
    assert {"accuracy/rotate", "accuracy/invert", "accuracy/classes"} <= set(result)


@pytest.mark.slow
def test_text_sst2_from_local_files(shared_data):
    task = wb.tasks.get("text:sst2", data_dir=str(shared_data / "sst2"), n_train=128, n_val=64, n_probe=128)
    model = task.model()
    assert all(not p.requires_grad for p in model.parameters())
    assert wb.match_targets(model, task.targets)[:2] == ["encoder.encoder.layer.0.attention.self.query",
                                                        "encoder.encoder.layer.0.attention.self.key"]
    result = task.evaluate(model)
    assert result["accuracy"] > 0.6  # the probe head is pretrained
    batch = next(task.batches(batch_size=4))
    assert math.isfinite(float(task.loss(model, batch)))


def test_text_without_data_explains_how_to_get_it(tmp_path):
    with pytest.raises(wb.ConfigError, match="train.tsv"):
        wb.tasks.get("text:sst2", data_dir=str(tmp_path))


@pytest.mark.slow
def test_text_data_dir_from_the_environment(shared_data, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(shared_data))
    task = wb.tasks.get("text:sst2", n_train=64, n_val=32, n_probe=64)
    assert task.options()["data_dir"] is None and len(next(task.batches(batch_size=4))["labels"]) == 4


def test_digits_continual_shifts_hold_the_classes_its_model_knows():
    # issue 14.8: the continual sequence starts from the 0-4 model (its last stage brings 5-9), so its domain-shift
    # stages hold digits 0-4 only; before, stage 0 also asked for 5-9 through a head that never learned them
    from workbench.tasks.digits import STAGE_CLASSES

    rotate, invert, classes = wb.tasks.get("digits:continual").stages()
    for stage, expected in ((rotate, {0, 1, 2, 3, 4}), (invert, {0, 1, 2, 3, 4}), (classes, {5, 6, 7, 8, 9})):
        for split in ("train", "val"):
            assert set(stage._data[split][1].tolist()) == expected == set(STAGE_CLASSES[stage.current])
    model = rotate.model()
    result = rotate.evaluate(model)
    assert {f"accuracy/{s}/own" for s in STAGE_CLASSES} <= set(result)
    # among its own classes a stage can only score at least as well as among all ten
    assert all(result[f"accuracy/{s}/own"] >= result[f"accuracy/{s}"] for s in STAGE_CLASSES)
    assert result["accuracy/rotate"] == result["accuracy"]
