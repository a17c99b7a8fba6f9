"""LT-SFT masks, bottleneck adapters (module-wrapping layers) and ``compose()`` (issue 20).

References are computed another way: the global top-K by a NumPy sort, the masked gradient from a ``full``
adaptation at the same weights, stacked adapters and summed differences by hand on the plain model.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TinyTask, tiny_model
from torch import nn

import workbench as wb
from workbench.compose import compose
from workbench.events import StepContext
from workbench.variants.modular.adapter import FFN_TARGETS, num_params
from workbench.variants.sparse.sft import SFT, select_mask

X = torch.randn(6, 32, generator=torch.Generator().manual_seed(5))


def _randomise(ad, seed=0, scale=0.1, only=None):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, layer in ad.named_layers():
            if only is None or n in only:
                for p in layer.parameters():
                    if p.requires_grad:
                        p.copy_(scale * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------------------------ SFT


def test_mask_keeps_exactly_the_global_top_k():
    ad = wb.adapt(tiny_model(), "sft", ["0", "2"], k=257)
    _randomise(ad)
    with torch.no_grad():
        ad.layer("2").delta.mul_(3.0)  # layer 2 moved more: a global budget gives it more than its share
    scores = np.concatenate([l.delta.detach().abs().numpy().ravel() for _, l in ad.named_layers()])
    expected = set(np.argsort(-scores, kind="stable")[:257].tolist())
    kept = select_mask(ad, 257)
    assert sum(kept.values()) == 257 == ad.num_trainable()
    assert kept["2"] > 257 * (64 * 32) / 4096  # more than a per-layer (proportional) budget would give
    chosen, offset = set(), 0
    for _, layer in ad.named_layers():
        chosen |= set((layer.index + offset).tolist())
        assert int(layer.mask().sum()) == len(layer.index)
        offset += layer.base.weight.numel()
    assert chosen == expected
    # reset to θ0: the model is the pretrained one again
    torch.testing.assert_close(ad.model(X), tiny_model()(X), atol=0, rtol=0)


def test_gradients_outside_the_mask_are_zero_and_inside_are_the_full_gradient():
    ad = wb.adapt(tiny_model(), "sft", ["0", "2"], k=500)
    _randomise(ad, seed=1)
    select_mask(ad, 500)
    _randomise(ad, seed=2, scale=0.05)  # generic kept values (reset put them at 0)
    ref = wb.adapt(tiny_model(), "full", ["0", "2"])
    with torch.no_grad():
        for n, layer in ad.named_layers():
            ref.layer(n).delta.copy_(layer.delta_weight())
    y = torch.randn(6, 32, generator=torch.Generator().manual_seed(9))
    for a in (ad, ref):
        nn.functional.mse_loss(a.model(X), y).backward()
    for n, layer in ad.named_layers():
        full = ref.layer(n).delta.grad.reshape(-1)
        dense = torch.zeros_like(full).index_add(0, layer.index, layer.values.grad)
        mask = layer.mask().reshape(-1)
        assert torch.all(dense[~mask] == 0)
        torch.testing.assert_close(dense[mask], full[mask], atol=1e-6, rtol=1e-5)
        assert full[~mask].abs().sum() > 0  # the full gradient is not zero there: the mask is what zeroes it


def test_two_phases_run_inside_train():
    task = TinyTask()
    steps, phase1, k = 12, 0.25, 300
    ks = []

    def spy(event):
        if event.type == "end":
            ks.append(event.run.adaptation.num_trainable())

    run = wb.train(task, "sft", steps=steps, lr=1e-2, probes=(), targets=task.targets, progress=False, k=k,
                   phase1=phase1, callback=spy)
    assert run.status == "completed"
    assert SFT.switch_step(steps, phase1) == 2
    ad = run.adaptation
    assert ad.num_trainable() == k == ks[0] == run.summary["trainable_params"]
    for n, update in ad.delta_weights().items():
        mask = ad.layer(n).mask()
        assert torch.all(update[~mask] == 0)  # AdamW with weight decay left every other entry at θ0
        assert torch.count_nonzero(update[mask]) > 0
    assert run.summary["final_loss"] < run.summary["init_loss"]


def test_l1_pull_is_lambda_times_mean_abs_change_in_phase1_only():
    ad = wb.adapt(tiny_model(), "sft", ["0", "2"], k=100, l1=0.3)
    _randomise(ad, seed=3)
    ctx = StepContext.standalone(ad, total_steps=10)
    by_hand = 0.3 * sum(l.delta.abs().sum() for _, l in ad.named_layers()) / (64 * 32 + 32 * 64)
    torch.testing.assert_close(ad.variant.regularizer(ctx), by_hand)
    select_mask(ad, 100)
    assert ad.variant.regularizer(ctx) is None


def test_density_sets_k_and_k_is_bounded_by_the_targets():
    ad = wb.adapt(tiny_model(), "sft", ["0", "2"], density=0.1)
    assert ad.variant.budget(ad) == round(0.1 * 4096)
    assert ad.num_trainable() == 4096  # phase 1 is full fine-tuning of the targets
    with pytest.raises(wb.ConfigError, match=r"k=5000 .*\[1, 4096\]"):
        wb.adapt(tiny_model(), "sft", ["0", "2"], k=5000)


def test_sparse_state_is_indices_and_values(tmp_path):
    ad = wb.adapt(tiny_model(), "sft", ["0", "2"], k=200)
    _randomise(ad, seed=4)
    select_mask(ad, 200)
    _randomise(ad, seed=5)
    state = ad.adapter_state()
    assert sum(v.numel() for v in state.values()) == 2 * 200
    assert all(v.dtype == torch.int32 for k, v in state.items() if k.endswith(".index"))
    ad.save(tmp_path / "sft")
    ad2 = wb.load_adaptation(tiny_model(), tmp_path / "sft")
    assert ad2.num_trainable() == 200
    torch.testing.assert_close(ad2.model(X), ad.model(X), atol=0, rtol=0)


# -------------------------------------------------------------------------------------------------- adapter


def _bottleneck(layer, h):
    return layer.up.weight @ torch.relu(layer.down.weight @ h.T + layer.down.bias[:, None]) + layer.up.bias[:, None]


def test_adapter_on_the_digits_vit_wraps_the_feed_forward_blocks():
    task = wb.tasks.get("digits:rotate")
    model = task.model()
    images = next(task.batches("val", batch_size=8))["images"]
    before = model(images)
    ad = wb.adapt(model, "adapter", FFN_TARGETS["digits"], reduction_factor=4)
    assert ad.module_names == ["blocks.0.mlp", "blocks.1.mlp"]
    assert all(type(l.base).__name__ == "MLP" for _, l in ad.named_layers())
    assert ad.num_trainable() == 2 * num_params(32, 4) == 2 * (2 * 32 * 8 + 8 + 32)
    out = ad.model(images)
    assert out.shape == (8, 10)
    torch.testing.assert_close(out, before, atol=0, rtol=0)  # W_up = 0: the identity at init
    _randomise(ad, seed=6)
    layer = ad.layer("blocks.0.mlp")
    h = torch.randn(3, 17, 32)
    expected = layer.base(h) + _bottleneck(layer, layer.base(h).reshape(-1, 32)).T.reshape(3, 17, 32)
    torch.testing.assert_close(layer(h), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ad.model(images), before)
    ad.remove()
    torch.testing.assert_close(model(images), before, atol=0, rtol=0)


@pytest.mark.slow
def test_adapter_on_minilm_wraps_each_layers_ffn_output():
    from workbench.tasks.text import DEFAULT_MODEL, _load_encoder

    encoder, tokenizer = _load_encoder(DEFAULT_MODEL)
    model = copy.deepcopy(encoder)
    batch = tokenizer(["a fine film", "not good at all, sadly"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**batch).last_hidden_state
    ad = wb.adapt(model, "adapter", FFN_TARGETS["text"], reduction_factor=16)
    assert ad.module_names == [f"encoder.layer.{i}.output" for i in range(6)]
    assert ad.num_trainable() == 6 * (2 * 384 * 24 + 24 + 384)
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    assert out.shape == before.shape == (2, batch["input_ids"].shape[1], 384)
    torch.testing.assert_close(out, before, atol=0, rtol=0)
    _randomise(ad, seed=7, scale=0.05)
    with torch.no_grad():
        assert not torch.allclose(model(**batch).last_hidden_state, before)


def test_module_targets_that_nest_or_have_no_width_are_refused():
    vit = wb.tasks.get("digits:rotate").model()
    with pytest.raises(wb.ConfigError, match="which it contains"):
        wb.adapt(vit, "adapter", ["blocks.0", "blocks.0.mlp"])
    with pytest.raises(wb.ConfigError, match="output width"):
        wb.adapt(tiny_model(), "adapter", ["1"])  # the Tanh holds no Linear
    with pytest.raises(wb.ConfigError, match="nn.Linear"):
        wb.adapt(vit, "lora", ["blocks.0.mlp"])  # weight variants still wrap Linears only


# -------------------------------------------------------------------------------------------------- compose


def _sft(seed, k=150, tmp=None):
    ad = wb.adapt(tiny_model(), "sft", ["0", "2"], k=k, seed=seed)
    _randomise(ad, seed=10 + seed)
    select_mask(ad, k)
    _randomise(ad, seed=20 + seed)
    return ad


def test_composing_two_sft_differences_equals_their_sum(tmp_path):
    a, b = _sft(0), _sft(1)
    a.save(tmp_path / "a")
    ref = tiny_model()
    with torch.no_grad():
        for n in ["0", "2"]:
            ref.get_submodule(n).weight += a.delta_weights()[n] + b.delta_weights()[n]
    model = tiny_model()
    comp = compose(model, [tmp_path / "a", b])  # a saved folder and an in-memory adaptation
    assert [p["kinds"] for p in comp.parts] == [{"0": "add", "2": "add"}] * 2
    torch.testing.assert_close(comp.model(X), ref(X), atol=1e-6, rtol=1e-6)
    overlap = (a.layer("0").mask() & b.layer("0").mask()).sum()
    assert overlap > 0  # shared entries add up too
    comp.remove()
    torch.testing.assert_close(model(X), tiny_model()(X), atol=0, rtol=0)


def test_adapters_stack_in_order_and_mix_with_sums():
    m1, m2 = tiny_model(), tiny_model()
    a = wb.adapt(m1, "adapter", ["0", "2"], reduction_factor=4, seed=1)
    b = wb.adapt(m2, "adapter", ["0", "2"], reduction_factor=8, seed=2)
    _randomise(a, seed=30)
    _randomise(b, seed=31)
    s = _sft(3)
    comp = compose(tiny_model(), [a, s, b])
    plain = tiny_model()
    with torch.no_grad():
        for n in ["0", "2"]:
            plain.get_submodule(n).weight += s.delta_weights()[n]

    def stacked(n, h):  # b(a(h)): MAD-X's Stack
        h = h + _bottleneck(a.layer(n), h).T
        return h + _bottleneck(b.layer(n), h).T

    with torch.no_grad():
        h = stacked("0", plain[0](X))
        expected = stacked("2", plain[2](torch.tanh(h)))
        torch.testing.assert_close(comp.model(X), expected, atol=1e-5, rtol=1e-5)
    comp.remove()
    torch.testing.assert_close(comp.model(X), tiny_model()(X), atol=0, rtol=0)


def test_compose_adds_full_trained_modules_as_differences():
    a, b = _sft(4), _sft(5)
    m = tiny_model()
    a2 = wb.adapt(m, "sft", ["0"], k=10, modules_to_save=["2"])
    with torch.no_grad():
        m[2].weight.add_(0.3)
    comp = compose(tiny_model(), [a2, a, b])
    expected = tiny_model()[2].weight + 0.3 + a.delta_weights()["2"] + b.delta_weights()["2"]
    torch.testing.assert_close(comp.model[2].weight, expected, atol=1e-6, rtol=1e-6)


def test_compose_refuses_what_cannot_be_composed():
    dora = wb.adapt(tiny_model(), "dora", ["0", "2"], **wb.get_variant("dora").example_config)
    with pytest.raises(wb.ConfigError, match="dora on 0: its update is not a ΔW added to W"):
        compose(tiny_model(), [_sft(0), dora])
    fora = wb.adapt(tiny_model(), "fora", ["0", "2"], **wb.get_variant("fora").example_config)
    with pytest.raises(wb.ConfigError, match="fora on 0: its update depends on the layer's input"):
        compose(tiny_model(), [fora])
    wide = nn.Sequential(nn.Linear(32, 48), nn.Tanh(), nn.Linear(48, 32)).requires_grad_(False)
    with pytest.raises(wb.ConfigError, match="different target shapes"):
        compose(wide, [_sft(0)])
    adapter = wb.adapt(tiny_model(), "adapter", ["0", "2"])
    with pytest.raises(wb.ConfigError, match="width 64, but the model's 0 has width 48"):
        compose(copy.deepcopy(wide), [adapter])
    with pytest.raises(wb.ConfigError, match="does not have"):
        compose(nn.Sequential(nn.Linear(32, 64)).requires_grad_(False), [_sft(0)])
    with pytest.raises(wb.ConfigError, match="other base weights"):
        compose(tiny_model(seed=1), [_sft(0)])
    merged = _sft(1)
    merged.merge()
    with pytest.raises(wb.ConfigError, match="is merged"):
        compose(tiny_model(), [merged])
    with pytest.raises(wb.ConfigError, match="empty"):
        compose(tiny_model(), [])
    adapted = tiny_model()
    wb.adapt(adapted, "lora", ["0"])
    with pytest.raises(wb.ConfigError, match="adapted already"):
        compose(adapted, [_sft(0)])
    with pytest.raises(wb.ConfigError, match="is a int"):
        compose(tiny_model(), [3])
