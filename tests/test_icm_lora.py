"""ICM-LoRA: the synthetic family task, checkpoint collection, the CVAE generator and generated adaptations."""

from __future__ import annotations

import math

import pytest
import torch

import workbench as wb
from workbench import generate as gen
from workbench.export import export_peft

FAMILY = "synthetic-family:path"
OPTS = {"dim": 8, "rank": 1, "n_train": 256, "n_val": 64}
TRAIN = {"steps": 30, "lr": 1e-2, "r": 1, "every": 10}
X = torch.randn(6, 8, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def store_and_collection(tmp_path_factory):
    store = wb.RunStore(tmp_path_factory.mktemp("runs"))
    col = gen.collect(FAMILY, [0.2, 0.4, 0.6], task_options=OPTS, keep=2, store=store, **TRAIN)
    return store, col


@pytest.fixture(scope="module")
def generator(store_and_collection):
    return gen.fit_generator(store_and_collection[1], blocks=2, channels=4, latent=4, embed=4, steps=100, lr=3e-3)


# -- the family task -----------------------------------------------------------------------------------------------
def test_family_shares_base_and_data_and_moves_the_truth():
    a, b = wb.tasks.get(FAMILY, t=0.0, **OPTS), wb.tasks.get(FAMILY, t=1.0, **OPTS)
    for n in a._base:
        torch.testing.assert_close(a._base[n], b._base[n])
    torch.testing.assert_close(a._x["train"], b._x["train"])
    for n, d0 in a.reference_delta().items():
        d1 = b.reference_delta()[n]
        energy = math.sqrt(OPTS["dim"]) / 2
        # rotate: rank and energy fixed along the path; the ends are orthogonal (disjoint column blocks)
        assert torch.linalg.matrix_rank(d0) == torch.linalg.matrix_rank(d1) == OPTS["rank"]
        assert math.isclose(float(d0.norm()), energy, rel_tol=1e-5) and math.isclose(float(d1.norm()), energy,
                                                                                      rel_tol=1e-5)
        assert float((d0 * d1).sum()).__abs__() < 1e-4


def test_interpolate_path_is_the_straight_line_between_the_ends():
    ends = [wb.tasks.get(FAMILY, t=t, path="interpolate", **OPTS).reference_delta() for t in (0.0, 1.0)]
    mid = wb.tasks.get(FAMILY, t=0.3, path="interpolate", **OPTS).reference_delta()
    for n in mid:
        torch.testing.assert_close(mid[n], 0.7 * ends[0][n] + 0.3 * ends[1][n], atol=1e-6, rtol=1e-5)


def test_family_options_are_validated_and_round_trip():
    with pytest.raises(wb.ConfigError, match=r"t=1.5 is invalid; t must be a number in \[0, 1\]"):
        wb.tasks.get(FAMILY, t=1.5)
    with pytest.raises(wb.ConfigError, match=r"rank=5 is invalid.*\[1, 4\]"):
        wb.tasks.get(FAMILY, dim=8, rank=5)
    task = wb.tasks.get(FAMILY, t=0.25, **OPTS)
    again = wb.tasks.get(task.name, **task.options())
    assert again.options() == task.options() and again.t == 0.25


# -- collection ----------------------------------------------------------------------------------------------------
def test_collection_keeps_the_last_checkpoints_as_runs(store_and_collection):
    store, col = store_and_collection
    assert col.conditions() == [0.2, 0.4, 0.6] and len(col.checkpoints) == 6
    for value in col.conditions():
        steps = sorted(c.step for c in col.checkpoints if c.condition == value)
        assert steps == [21, 30]  # updates done at the last two checks (steps 20 and 29: every 10, and the last)
        run = next(r for r in col.runs if r.config["task_options"]["t"] == value)
        final = run.adaptation.adapter_state()
        for k, v in col.final(value).state.items():  # the last checkpoint is the trained adapter itself
            torch.testing.assert_close(v, final[k])
    listed = store.list()
    assert len(listed) == 6 and set(listed.status) == {"completed"}
    back = gen.load_collection(store)
    assert [(c.condition, c.step) for c in back.checkpoints] == sorted((c.condition, c.step) for c in col.checkpoints)
    for c in back.checkpoints:
        mine = next(m for m in col.checkpoints if (m.condition, m.step) == (c.condition, c.step))
        for k in mine.state:
            torch.testing.assert_close(c.state[k], mine.state[k])


def test_collect_refuses_bad_keep():
    with pytest.raises(wb.ConfigError, match=r"keep=0 is invalid; keep must be an integer in \[1, inf\)"):
        gen.collect(FAMILY, [0.0], keep=0, task_options=OPTS, **TRAIN)


# -- the generator -------------------------------------------------------------------------------------------------
def test_cvae_loss_decreases_on_a_fixed_seed(generator, store_and_collection):
    h = generator.history
    assert len(h) == 100 and all(math.isfinite(v) for v in h)
    assert sum(h[-10:]) / 10 < 0.5 * sum(h[:10]) / 10
    # the same seed gives the same run (the CVAE's init, batches and z draws are seeded); another seed does not
    short = {"blocks": 2, "channels": 4, "latent": 4, "embed": 4, "steps": 5, "lr": 3e-3}
    one, two = (gen.fit_generator(store_and_collection[1], **short) for _ in range(2))
    other = gen.fit_generator(store_and_collection[1], seed=1, **short)
    assert one.history == two.history and one.id == two.id
    assert one.history[0] == h[0] and other.history[0] != h[0]


def test_generator_config_is_validated(store_and_collection):
    with pytest.raises(wb.ConfigError, match=r"blocks=13 is invalid; blocks must be an integer in \[1, 12\]"):
        gen.fit_generator(store_and_collection[1], blocks=13)
    with pytest.raises(wb.ConfigError, match="unknown config key 'latnt'"):
        gen.fit_generator(store_and_collection[1], latnt=3)


def test_generated_adaptation_passes_the_layer_contract(generator):
    task = generator.task_at(0.3)
    ad = gen.generate(generator, task.model(), 0.3)
    assert isinstance(ad, wb.Adaptation) and ad.generated["generator"] == generator.id
    assert ad.generated["condition"] == {"t": 0.3} and ad.generated["extrapolated"] is False
    state = generator.state(0.3)  # the decoded tensors, read another way: straight from the generator
    for name, layer in ad.named_layers():
        xin = torch.randn(4, 3, layer.in_features)
        torch.testing.assert_close(layer(xin), layer.base(xin) + layer.delta_forward(xin), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(xin), layer.base(xin) + xin @ layer.delta_weight().t(), atol=1e-5, rtol=1e-4)
        b, a = layer.factors()
        torch.testing.assert_close(b @ a, layer.delta_weight(), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer.lora_A, state[f"{name}.lora_A"])
        torch.testing.assert_close(layer.delta_weight(), layer.scaling * state[f"{name}.lora_B"] @
                                   state[f"{name}.lora_A"], atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        expected = ad.model(X)
        ad.merge()
        torch.testing.assert_close(ad.model(X), expected, atol=1e-5, rtol=1e-4)
        ad.unmerge()
        torch.testing.assert_close(ad.model(X), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(expected, task.model()(X))  # the generated update changes the model


def test_generated_adaptation_and_generator_round_trip(generator, tmp_path):
    task = generator.task_at(0.5)
    ad = gen.generate(generator, task.model(), 0.5)
    with torch.no_grad():
        expected = ad.model(X)
    ad.save(tmp_path / "adapter")
    back = gen.load_generated(task.model(), tmp_path / "adapter")
    plain = wb.load_adaptation(task.model(), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(back.model(X), expected, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(plain.model(X), expected, atol=1e-6, rtol=1e-6)
    assert back.generated == ad.generated
    generator.save(tmp_path / "gen")
    loaded = gen.load_generator(tmp_path / "gen")
    assert loaded.id == generator.id and loaded.range == generator.range
    assert loaded.num_parameters() == generator.num_parameters()
    for k, v in generator.state(0.45).items():
        torch.testing.assert_close(loaded.state(0.45)[k], v)


def test_condition_outside_the_trained_range_is_refused_or_flagged(generator):
    model = generator.task_at(0.6).model()
    with pytest.raises(wb.ConfigError, match=r"t=0.9 is outside.*t must be a number in \[0.2, 0.6\]"):
        gen.generate(generator, model, 0.9)
    with pytest.raises(wb.ConfigError, match=r"t=0.1 is outside"):
        gen.generate_run(generator, 0.1)
    ad = gen.generate(generator, model, 0.9, extrapolate=True)
    assert ad.generated["extrapolated"] is True


def test_generated_run_is_an_ordinary_run(generator, tmp_path):
    store = wb.RunStore(tmp_path / "runs")
    run = gen.generate_run(generator, 0.3, store=store)
    assert run.config["generated"]["generator"] == generator.id and run.config["task_options"]["t"] == 0.3
    loaded = store.load(run.id)
    assert loaded.config["generated"]["condition"] == {"t": 0.3}
    ad = loaded.restore()
    for n, dw in run.adaptation.delta_weights().items():
        torch.testing.assert_close(ad.delta_weights()[n], dw)
    value = generator.task_at(0.3).evaluate(ad.model)["rel_error"]
    assert loaded.summary["metric_value"] == pytest.approx(value, rel=1e-5)
    # the probes ran on it like on a trained run: spectra against the truth, singular values = those of ΔW
    m = loaded.metrics
    assert {"effective_rank", "subspace_similarity"} <= set(m[m.probe == "spectra"].key)
    sv = loaded.snapshot("spectra", "singular_values", "layers.0")
    expected = torch.linalg.svdvals(run.adaptation.delta_weights()["layers.0"])[: len(sv)]
    torch.testing.assert_close(sv, expected, atol=1e-5, rtol=1e-4)
    # and it exports to PEFT exactly (a rank-1 LoRA needs no truncation)
    out = export_peft(run.adaptation, tmp_path / "peft")
    assert out["r"] == 1 and out["relative_error"] < 1e-6
