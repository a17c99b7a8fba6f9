"""The conformance matrix: every registered variant must satisfy the layer contract of docs/DESIGN.md.

Adding a variant to the registry adds it here; nothing else needs editing. Each variant is exercised with its
``example_config`` on ``tiny_model`` (32→64→32).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TinyTask, tiny_model

import workbench as wb
from workbench.events import StepContext

INFOS = wb.variant_infos()
NAMES = [v.name for v in INFOS]
X = torch.randn(8, 32, generator=torch.Generator().manual_seed(123))


def make(name: str, seed: int = 0):
    model = tiny_model()
    info = wb.get_variant(name)
    return model, wb.adapt(model, name, ["0", "2"], seed=seed, **info.example_config)


def perturb(ad, seed: int = 7) -> None:
    """Move every trainable tensor away from its init so ΔW is generic (B = 0 would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ad.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))


def base_out(ad, x):
    """The frozen path alone: every adapted layer disabled."""
    with ad.disabled():
        return ad.model(x)


PRESERVING = [n for n in NAMES if wb.get_variant(n).preserves_init]
CHANGING = [n for n in NAMES if not wb.get_variant(n).preserves_init]


@pytest.mark.parametrize("name", PRESERVING)
def test_output_unchanged_at_init(name):
    model = tiny_model()
    before = model(X)
    ad = wb.adapt(model, name, ["0", "2"], **wb.get_variant(name).example_config)
    torch.testing.assert_close(ad.model(X), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", CHANGING)
def test_variants_that_say_they_change_the_output_at_init_do(name):
    """preserves_init=False must be true to its word (after prepare(), for data-driven inits)."""
    task = TinyTask()
    model = task.model()
    before = model(X)
    ad = wb.adapt(model, name, task.targets, **wb.get_variant(name).example_config)
    ctx = StepContext.standalone(ad, total_steps=10, lr=1e-2, task=task)
    ad.variant.prepare(ctx, task.batches("train", batch_size=32, seed=0))
    assert not torch.allclose(ad.model(X), before, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_base_plus_delta(name):
    _, ad = make(name)
    perturb(ad)
    x = torch.randn(5, 3, 32)  # a sequence batch: layers must handle leading dims
    for mod_name, layer in ad.named_layers():
        xin = x if mod_name == "0" else torch.randn(5, 3, 64)
        out = layer(xin)
        torch.testing.assert_close(out, layer.base(xin) + layer.delta_forward(xin), atol=1e-5, rtol=1e-5)
        if layer.linear_delta:
            torch.testing.assert_close(out, layer.base(xin) + xin @ layer.delta_weight().t(), atol=1e-5, rtol=1e-4)
        elif layer.has_weight:  # a non-linear parameterisation that is still a linear layer: W_eff x
            torch.testing.assert_close(out, torch.nn.functional.linear(xin, layer.effective_weight(), layer.bias),
                                       atol=1e-5, rtol=1e-4)


#: linear-ΔW layers that define factors(): their update has a low-rank form B A, which they must return
WITH_FACTORS = [n for n in NAMES if wb.get_variant(n).Layer.linear_delta
                and wb.get_variant(n).Layer.factors is not wb.VariantLayer.factors]
WITHOUT_FACTORS = [n for n in NAMES if n not in WITH_FACTORS]


@pytest.mark.parametrize("name", WITH_FACTORS)
def test_factors_match_delta_weight(name):
    _, ad = make(name)
    perturb(ad)
    for _, layer in ad.named_layers():
        f = layer.factors()
        assert f is not None, f"{name}: {type(layer).__name__} defines factors() but returned None"
        b, a = f
        assert b.shape[1] == a.shape[0]
        torch.testing.assert_close(b @ a, layer.delta_weight(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", WITHOUT_FACTORS)
def test_updates_without_a_low_rank_form_return_no_factors(name):
    """Dense, frequency-domain, magnitude-rescaled and multiplicative updates: ``factors()`` is None, so probes and
    exports that need B A fall back to ΔW (or skip the layer) instead of using factors that are not ΔW's."""
    _, ad = make(name)
    perturb(ad)
    assert all(layer.factors() is None for _, layer in ad.named_layers())


WITH_WEIGHT = [n for n in NAMES if wb.get_variant(n).Layer.has_weight]
WITHOUT_WEIGHT = [n for n in NAMES if not wb.get_variant(n).Layer.has_weight]


@pytest.mark.parametrize("name", WITH_WEIGHT)
def test_update_is_the_change_from_the_original_weight(name):
    """``pretrained_weight()`` is the caller's W0 (not a re-based copy), ``update() = effective_weight() − W0``, and
    ``update_factors()``, where given, multiply to it (PiSSA: s·(B A − B0 A0); before, probes read s·B A)."""
    model, ad = make(name)
    original = {n: tiny_model().get_submodule(n).weight for n in ad.module_names}
    perturb(ad)
    with torch.no_grad():
        for n, layer in ad.named_layers():
            torch.testing.assert_close(layer.pretrained_weight(), original[n], atol=1e-5, rtol=1e-5)
            update = layer.update()
            torch.testing.assert_close(update, layer.effective_weight() - original[n], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(ad.delta_weights()[n], update)
            f = layer.update_factors()
            if f is not None:
                torch.testing.assert_close(f[0] @ f[1], update, atol=1e-5, rtol=1e-4)
            elif layer.linear_delta and layer.factors() is not None:
                pytest.fail(f"{name}: factors() exist but update_factors() is None")


@pytest.mark.parametrize("name", WITHOUT_WEIGHT)
def test_input_dependent_variants_refuse_to_merge_clearly(name):
    _, ad = make(name)
    with pytest.raises(wb.ConfigError, match="cannot be merged"):
        ad.merge()
    assert ad.delta_weights() == {}


@pytest.mark.parametrize("name", WITH_WEIGHT)
def test_merge_unmerge_exact(name):
    _, ad = make(name)
    perturb(ad)
    w0 = {n: l.base.weight.detach().clone() for n, l in ad.named_layers()}
    with torch.no_grad():
        expected = ad.model(X)
        ad.merge()
        torch.testing.assert_close(ad.model(X), expected, atol=1e-5, rtol=1e-4)
        ad.unmerge()
        torch.testing.assert_close(ad.model(X), expected, atol=1e-5, rtol=1e-4)
    for n, layer in ad.named_layers():
        torch.testing.assert_close(layer.base.weight, w0[n], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    _, ad = make(name, seed=3)
    perturb(ad)
    with torch.no_grad():
        expected = ad.model(X)
    ad.save(tmp_path / "adapter")
    ad2 = wb.load_adaptation(tiny_model(), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(ad2.model(X), expected, atol=1e-6, rtol=1e-6)
    assert ad2.num_trainable() == ad.num_trainable()


@pytest.mark.parametrize("name", NAMES)
def test_only_adapter_tensors_train(name):
    task = TinyTask()
    frozen_at_start, adapter_ids = {}, set()

    def on_event(event):
        if event.type == "start":  # before training: what is adapter and what is frozen
            ad = event.run.adaptation
            adapter_ids.update(id(p) for p in ad.parameters() if p.requires_grad)
            frozen_at_start.update({n: p.detach().clone() for n, p in ad.model.named_parameters()
                                    if id(p) not in adapter_ids})

    run = wb.train(task, name, steps=3, lr=1e-2, probes=(), targets=task.targets, progress=False,
                   callback=on_event, **wb.get_variant(name).example_config)
    assert run.status == "completed"
    ad = run.adaptation
    adapter_ids |= {id(p) for p in ad.parameters() if p.requires_grad}  # tensors a variant grew while training
    assert frozen_at_start
    for n, p in ad.model.named_parameters():
        if id(p) in adapter_ids:
            continue
        assert not p.requires_grad, f"{n} is trainable but is not an adapter tensor"
        assert p.grad is None, f"{n} received a gradient"
        assert torch.equal(p, frozen_at_start[n]), f"frozen tensor {n} changed during training"


@pytest.mark.parametrize("name", NAMES)
def test_num_trainable_counts_elements(name):
    model, ad = make(name)
    seen, total = set(), 0
    params = list(model.parameters()) + (list(ad.shared.parameters()) if ad.shared is not None else [])
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    assert ad.num_trainable() == total > 0


@pytest.mark.parametrize("name", NAMES)
def test_remove_restores_model(name):
    model = tiny_model()
    originals = {n: model.get_submodule(n) for n in ["0", "2"]}
    before = model(X)
    ad = wb.adapt(model, name, ["0", "2"], **wb.get_variant(name).example_config)
    perturb(ad)
    restored = ad.remove()
    assert restored is model
    for n, m in originals.items():
        assert model.get_submodule(n) is m
    assert all(not p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(X), before, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_training_lowers_the_loss(name):
    task = TinyTask()
    run = wb.train(task, name, steps=30, lr=1e-2, probes=(), targets=task.targets, progress=False,
                   **wb.get_variant(name).example_config)
    assert run.status == "completed"
    assert run.summary["final_loss"] < run.summary["init_loss"]


def _bad_values(info: dict):
    """Values that break the declared type or range of one config field."""
    kind, low, high = info["type"], info["low"], info["high"]
    yield ("wrong type", [1, 2])
    if info["choices"] is not None:
        yield ("not a choice", "__not_a_choice__")
    if kind in ("int", "float"):
        shape = (64, 32)
        lo = low(shape) if callable(low) else low
        hi = high(shape) if callable(high) else high
        if lo is not None:
            yield ("below range", lo if info["low_open"] else (lo - 1 if kind == "int" else lo - 0.5))
        if hi is not None:
            yield ("above range", hi + 1 if kind == "int" else hi + 0.5)
        if kind == "float":
            yield ("not finite", float("nan"))


CASES = [(v.name, f["name"], why, bad) for v in INFOS for f in v.config.fields_info() for why, bad in _bad_values(f)]


@pytest.mark.parametrize("name,field,why,bad", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_config_rejects_bad_values(name, field, why, bad):
    cfg = dict(wb.get_variant(name).example_config)
    cfg[field] = bad
    with pytest.raises(wb.ConfigError, match=field):
        wb.adapt(tiny_model(), name, ["0", "2"], **cfg)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_config_key_is_an_error(name):
    with pytest.raises(wb.ConfigError, match="unknown config key"):
        wb.adapt(tiny_model(), name, ["0", "2"], not_a_field=1)


@pytest.mark.parametrize("name", NAMES)
def test_registry_entry_is_documented(name):
    info = wb.get_variant(name)
    assert info.paper and info.summary and info.formula, f"{name} lacks a paper, summary or formula"
    assert info.__module__.startswith("workbench.variants."), info.__module__
    doc = __import__(info.__module__, fromlist=["_"]).__doc__ or ""
    assert len(doc) > 80, f"{name}'s module docstring should cite the paper and say what is simplified"
    assert dataclasses.is_dataclass(info.Config)
