"""Issue 13, items 1 and 2, over every registered variant.

1. One notion of "the change from the original W0": every probe reads ``update() = effective_weight() −
   pretrained_weight()``, whatever the layer keeps as its frozen base (PiSSA's residual W0 − s·B0 A0, QWHA's quantised
   W0). The references here are computed from a fresh copy of the pretrained model, not from the layer's base.
2. Weight decay never moves the model away from W0: with zero gradients, AdamW's decay (wd 0.1, lr 1e-2, 200 steps)
   leaves the effective weight of every variant that starts at W0 where it is, and never increases the distance to
   W0 of one that starts elsewhere.
"""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.probes import get_probes
from workbench.probes.base import ProbeContext
from workbench.probes.spectra import intruder_dimensions
from workbench.recipes import get_recipe

NAMES = wb.variant_names()
WITH_WEIGHT = [n for n in NAMES if wb.get_variant(n).Layer.has_weight]
PRESERVING = [n for n in WITH_WEIGHT if wb.get_variant(n).preserves_init]
TASK = "synthetic:lowrank"


def _adapt(name: str, task):
    return wb.adapt(task.model(), name, task.targets, **wb.get_variant(name).example_config)


def _original_weights(task, ad) -> dict[str, torch.Tensor]:
    """W0 of every adapted module, read from a fresh pretrained model (never from the layer)."""
    fresh = task.model()
    return {n: fresh.get_submodule(n).weight.detach().float() for n in ad.module_names}


def _records(result) -> dict[tuple[str, str], float]:
    return {(m, k): v for m, k, v in result.records}


@pytest.mark.parametrize("name", PRESERVING)
def test_probed_update_is_zero_right_after_adapt(name):
    """As for LoRA: ΔW = 0, rel_error = 1, no intruder dimension, a zero frequency map. Before, PiSSA's probed
    ‖ΔW‖/‖W0‖ was 0.49 and its rel_error 1.41 on synthetic:lowrank before any step."""
    task = wb.tasks.get(TASK, seed=0)
    ad = _adapt(name, task)
    ad.eval()
    w0 = _original_weights(task, ad)
    ref = task.reference_delta()
    ctx = ProbeContext(adaptation=ad, task=task, reference=ref)
    spectra = _records(get_probes(["spectra"])[0].after_step(ctx))
    freq = get_probes(["frequency"])[0].after_step(ctx)
    for module, layer in ad.named_layers():
        with torch.no_grad():
            torch.testing.assert_close(layer.pretrained_weight().float(), w0[module], atol=1e-5, rtol=1e-5)
        scale = float(torch.linalg.matrix_norm(w0[module]))
        assert spectra[(module, "norm_fro")] <= 1e-6 * scale, (module, spectra[(module, "norm_fro")] / scale)
        assert spectra[(module, "rel_error")] == pytest.approx(1.0, abs=1e-6)
        assert spectra.get((module, "intruder_dimensions"), 0.0) == 0.0
        assert float(freq.arrays[(module, "dct")].max()) <= 1e-6 * scale


@pytest.mark.parametrize("name", WITH_WEIGHT)
def test_probes_read_the_change_from_the_original_weight(name):
    """After moving every trainable tensor, the spectra probe's singular values, rel_error and intruder dimensions
    are those of W_eff − W0 with W0 the pretrained weight (the factored fast path included), and the gradients
    probe's update norm is that of the change in W_eff."""
    task = wb.tasks.get(TASK, seed=0)
    ad = _adapt(name, task)
    ad.eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ad.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))
    w0, ref = _original_weights(task, ad), task.reference_delta()
    ctx = ProbeContext(adaptation=ad, task=task, reference=ref)
    result = get_probes(["spectra"])[0].after_step(ctx)
    spectra = _records(result)
    for module, layer in ad.named_layers():
        with torch.no_grad():
            w_eff = layer.effective_weight().detach().float()
        true = w_eff - w0[module]
        expected = torch.linalg.svdvals(true)
        got = result.arrays[(module, "singular_values")]
        k = min(len(got), len(expected))
        torch.testing.assert_close(got[:k], expected[:k], atol=1e-4 * float(expected[0]) + 1e-6, rtol=1e-3)
        assert float(torch.cat([expected[k:], torch.zeros(1)]).max()) <= 1e-4 * float(expected[0]) + 1e-6
        rel = float(torch.linalg.matrix_norm(true - ref[module]) / torch.linalg.matrix_norm(ref[module]))
        assert spectra[(module, "rel_error")] == pytest.approx(rel, rel=1e-4, abs=1e-6)
        intruders = intruder_dimensions(w0[module], w_eff) if float(true.abs().max()) > 0 else 0  # LoRA-SB: B = 0
        assert spectra.get((module, "intruder_dimensions"), 0) == intruders
        base = result.arrays[(module, "singular_values_base")]
        torch.testing.assert_close(base, torch.linalg.svdvals(w0[module]), atol=1e-4, rtol=1e-4)


def _state(ad) -> dict[str, torch.Tensor]:
    """The effective weight of every layer, or its output on fixed inputs where it has no weight (FoRA)."""
    out = {}
    with torch.no_grad():
        for n, layer in ad.named_layers():
            if layer.has_weight:
                out[n] = layer.effective_weight().detach().float().clone()
            else:
                x = torch.randn(4, 8, layer.in_features, generator=torch.Generator().manual_seed(1))
                out[n] = layer(x).detach().float().clone()
    return out


@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_with_zero_gradients_does_not_move_the_model_from_w0(name):
    """Before: DoRA's magnitude moved W_eff by 18.1%, PiSSA's factors by 11.7%, LoLDU's z by 2.6%, SVFit's σ by 6.4%,
    TLoRA's transform cores by 33.0%, and QWHA's coefficients undid part of the quantisation-error correction."""
    task = wb.tasks.get(TASK, seed=0)
    torch.manual_seed(0)
    ad = _adapt(name, task)
    ad.eval()
    w0 = _original_weights(task, ad)
    start = _state(ad)
    optimizer = get_recipe("adamw")(ad, 1e-2, 0.1).optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len({id(p) for p in params}) == len(params)
    for _ in range(200):
        for p in params:
            p.grad = torch.zeros_like(p)  # a zero gradient, not None: AdamW skips tensors without one
        optimizer.step()
    end = _state(ad)
    for module in start:
        change = float(torch.linalg.vector_norm(end[module] - start[module]) / torch.linalg.vector_norm(start[module]))
        if wb.get_variant(name).preserves_init:
            assert change < 1e-6, f"{name} {module}: W_eff moved by {change:.3%}"
        elif start[module].shape == w0[module].shape:  # starts away from W0: decay may only bring it closer
            before = float(torch.linalg.matrix_norm(start[module] - w0[module]))
            after = float(torch.linalg.matrix_norm(end[module] - w0[module]))
            assert after <= before * (1 + 1e-6), f"{name} {module}: ‖W_eff − W0‖ grew from {before} to {after}"


@pytest.mark.parametrize("name", NAMES)
def test_no_decay_names_trainable_tensors_of_the_layer(name):
    task = wb.tasks.get(TASK, seed=0)
    ad = _adapt(name, task)
    owners = [layer for _, layer in ad.named_layers()] + ([ad.shared] if ad.shared is not None else [])
    for owner in owners:
        for attr in owner.no_decay:
            value = getattr(owner, attr)
            tensors = list(value.parameters()) if isinstance(value, torch.nn.Module) else [value]
            assert tensors and all(isinstance(t, torch.nn.Parameter) for t in tensors), (name, attr)


def test_qwha_frequency_maps_read_the_change_from_w0_and_its_own_term_beside_it():
    """The ``wht`` map is |(W_Q + F H⁻¹ − W0) H| (one-sided): the correction with the quantisation error it leaves;
    ``wht_adapter`` is the map of F H⁻¹ alone, whose top cells are exactly QWHA's locations."""
    from workbench.probes.frequency import wht_map

    task = wb.tasks.get(TASK, seed=0)
    ad = wb.adapt(task.model(), "qwha", task.targets, r=2, bits=4, calib_batches=0)
    w0 = _original_weights(task, ad)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in ad.named_layers():
            layer.coefficients.copy_(torch.randn(layer.coefficients.shape, generator=g))
    out = get_probes(["frequency"])[0].after_step(ProbeContext(adaptation=ad, task=task))
    for name, layer in ad.named_layers():
        with torch.no_grad():
            true = layer.effective_weight().float() - w0[name]
        torch.testing.assert_close(out.arrays[(name, "wht")], wht_map(true, "input"), atol=1e-5, rtol=1e-4)
        own = out.arrays[(name, "wht_adapter")]
        k = layer.rows.numel()
        top = set(torch.topk(own.flatten(), k).indices.tolist())
        assert top == set((layer.rows * own.shape[1] + layer.cols).tolist())
