"""Bayesian-LoRA's quantization gates (issue 14, point 5): the nested quantizer of ``workbench.quant`` against its RTN,
the gated layer against hand-built quantized factors, the bit prior, bit operations, and merge/unmerge in training."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import workbench as wb
from workbench import quant
from workbench.errors import ConfigError
from workbench.events import StepContext
from workbench.variants.rank.bayesian_lora import ACTIVATION_BITS, adapter_bops, full_bops, open_probability

W = torch.randn(12, 40, generator=torch.Generator().manual_seed(3))
X = torch.randn(7, 32, generator=torch.Generator().manual_seed(5))


def assert_rtn(q, reference, w, bits):
    """Equal to the RTN reference; at 16 bits float32's rounding of (w − x_{≤8})/s₁₆ against (w − lo)/s₁₆ flips a
    near-tie now and then, so there a few entries may sit one 16-bit step away."""
    if bits <= 8:
        torch.testing.assert_close(q, reference, atol=1e-6, rtol=0)
        return
    step = float(w.max() - w.min()) / (2 ** bits - 1)
    off = (q - reference).abs()
    assert float(off.max()) <= 1.01 * step and float((off > 1e-6).float().mean()) < 0.02


# -- the shared quantizer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", [0, 16, 64])
def test_nested_error_falls_as_bits_rise_and_each_level_is_the_rtn_quantizer(group):
    errors = []
    for b in quant.NESTED_BITS[:-1]:
        q = quant.nested_quantize(W, b, group)
        reference = quant.quantize(W.reshape(1, -1) if group == 0 else W, b, W.numel() if group == 0 else group,
                                   "rtn").reshape(W.shape)
        assert_rtn(q, reference, W, b)  # x₂ + ε₄ + … + ε_b is the b-bit RTN
        errors.append(float((q - W).abs().max()))
        if group == 0:  # at most half a step of the b-bit grid on [min, max]
            assert errors[-1] <= float(W.max() - W.min()) / (2 * (2 ** b - 1)) * (1 + 1e-5)
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    terms = quant.nested_residuals(W, group)
    torch.testing.assert_close(sum(terms[1:], terms[0]), W, atol=1e-6, rtol=0)  # 32 bits: float precision


def test_gated_sum_drops_a_level_and_everything_above_it():
    terms = quant.nested_residuals(W, 0)
    for k in range(len(terms)):
        gates = [1.0] * k + [0.0] * (len(terms) - 1 - k)
        torch.testing.assert_close(quant.gated_residual_sum(terms, gates), sum(terms[1:k + 1], terms[0]))
    # a closed lower gate shuts the higher levels even when their own gates are open
    torch.testing.assert_close(quant.gated_residual_sum(terms, [1.0, 0.0, 1.0, 1.0]), terms[0] + terms[1])


def test_straight_through_rounding_passes_the_gradient():
    w = W.clone().requires_grad_(True)
    q = quant.gated_residual_sum(quant.nested_residuals(w, 0, straight_through=True), [1.0, 0.5, 0.0, 0.0])
    (q * W).sum().backward()
    torch.testing.assert_close(w.grad, W)  # ∂x_q/∂w = 1


def test_nested_levels_must_double():
    with pytest.raises(ConfigError, match="bits"):
        quant.nested_residuals(W, 0, (2, 4, 6))
    with pytest.raises(ConfigError, match="bits=3"):
        quant.nested_quantize(W, 3, 0)


# -- the layer -------------------------------------------------------------------------------------------------


def quantized_adaptation(**kw):
    ad = wb.adapt(tiny_model(), "bayesian-lora", ["0", "2"], r=4, quantize=True, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in ad.named_layers():
            layer.gate.copy_(torch.randn(4, generator=g))
            layer.lora_A.normal_(0, 0.5, generator=g)
            layer.lora_B.normal_(0, 0.5, generator=g)
    return ad


def rtn(w, bits, group=0):
    return quant.quantize(w.reshape(1, -1), bits, w.numel(), "rtn").reshape(w.shape) if group == 0 else \
        quant.quantize(w, bits, group, "rtn")


def set_bits(layer, bits_a, bits_b):
    """Open the gates up to ``bits`` and shut the rest, per matrix."""
    with torch.no_grad():
        for row, bits in enumerate((bits_a, bits_b)):
            for k, level in enumerate(layer.levels[1:]):
                layer.bit_log_alpha[row, k] = 6.0 if level <= bits else -6.0


def test_all_gates_open_is_the_fp_adapter_up_to_the_top_levels_error():
    ad = quantized_adaptation(max_bits=8)
    layer = ad.layer("2").eval()
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    g = layer.effective_gate().detach() * layer.scaling
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
    out = layer.delta_forward(x).detach()
    aq, bq = rtn(a, 8), rtn(b, 8)
    torch.testing.assert_close(out, (x @ aq.t() * g) @ bq.t(), atol=1e-5, rtol=1e-5)
    assert float((aq - a).abs().max()) <= float(a.max() - a.min()) / (2 * 255) + 1e-7  # half an 8-bit step
    fp = (x @ a.t() * g) @ b.t()
    bound = (x.abs() @ (aq - a).abs().t() * g.abs()) @ bq.abs().t() + (x @ a.t() * g).abs() @ (bq - b).abs().t()
    assert bool(((out - fp).abs() <= bound + 1e-5).all())
    assert float((out - fp).abs().max()) > 0  # it is quantized
    assert [float(v) for v in layer.bits()] == [8.0, 8.0]


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_gates_closed_above_b_give_the_b_bit_quantization(bits):
    ad = quantized_adaptation(quant_group=16)
    layer = ad.layer("2").eval()
    set_bits(layer, bits, 32)
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    g = layer.effective_gate().detach() * layer.scaling
    aq, bq = layer.weights()
    assert_rtn(aq.detach(), rtn(a, bits, 16), a, bits)
    torch.testing.assert_close(bq.detach(), b, atol=1e-6, rtol=0)  # 32 bits: B itself to float precision
    torch.testing.assert_close(layer.delta_weight().detach(), (bq.detach() * g) @ aq.detach(), atol=1e-6, rtol=0)
    if bits <= 8:
        torch.testing.assert_close(layer.delta_weight().detach(), (b * g) @ rtn(a, bits, 16), atol=1e-5, rtol=1e-5)
    views = layer.inspect()
    assert float(views["bits_A"]) == bits and float(views["bits_B"]) == 32


def test_merge_then_unmerge_cancel_in_training_mode_with_sampled_bit_gates():
    ad = quantized_adaptation()
    with torch.no_grad():
        for _, layer in ad.named_layers():
            layer.bit_log_alpha.copy_(torch.tensor([[3.0, 0.2, -0.5, 0.0], [1.0, 1.0, -3.0, 2.0]]))
    ad.model.train()
    layer = ad.layer("2")
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    draws = {tuple(layer.delta_forward(x).detach().flatten()[:4].tolist()) for _ in range(6)}
    assert len(draws) > 1  # training forwards sample the bit gates
    w0 = layer.base.weight.detach().clone()
    layer.merge()
    merged = layer.base.weight.detach().clone()
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    layer.eval()
    torch.testing.assert_close(merged - w0, layer.delta_weight().detach(), atol=1e-6, rtol=0)


def test_bops_equal_a_hand_count():
    ad = quantized_adaptation()
    layer = ad.layer("2")  # 64 → 32
    with torch.no_grad():
        layer.log_alpha.copy_(torch.tensor([3.0, 3.0, -3.0, 3.0]))  # 3 active ranks
    set_bits(layer, 4, 8)
    set_bits(ad.layer("0"), 2, 16)  # 32 → 64, 4 active ranks
    hand_2 = (4 * 3 * 64 + 8 * 32 * 3) * ACTIVATION_BITS
    hand_0 = (2 * 4 * 32 + 16 * 64 * 4) * ACTIVATION_BITS
    assert layer.bops() == hand_2 and float(layer.inspect()["bops"]) == hand_2
    assert adapter_bops(ad) == hand_0 + hand_2
    assert full_bops(ad) == 32 * ACTIVATION_BITS * 4 * (32 + 64 + 64 + 32)
    plain = wb.adapt(tiny_model(), "bayesian-lora", ["0", "2"], r=4)
    assert adapter_bops(plain) == full_bops(plain)  # unquantized: 32-bit weights, every rank on at init


@pytest.mark.parametrize("cost", ["bops", "const"])
def test_bit_prior_is_the_bayesian_bits_regularizer_by_hand(cost):
    ad = quantized_adaptation(max_bits=16, bit_cost=cost, quant_prior=0.5, prior=0.0)
    la = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]])
    with torch.no_grad():
        for _, layer in ad.named_layers():
            layer.bit_log_alpha.copy_(la)
    q = open_probability(la)
    expected, total = 0.0, 0.0
    for _, layer in ad.named_layers():
        macs = [layer.r * layer.in_features, layer.r * layer.out_features]
        for m in range(2):
            for k, level in enumerate((4, 8, 16)):
                c = level * macs[m] if cost == "bops" else 1.0
                expected += float(q[m, :k + 1].prod()) * c
                total += c
    value = ad.variant.regularizer(StepContext.standalone(ad, total_steps=1))
    assert float(value.detach()) == pytest.approx(0.5 * expected / total, rel=1e-6)
    value.backward()
    assert all(bool((layer.bit_log_alpha.grad > 0).all()) for _, layer in ad.named_layers())


def test_quantization_settings_are_checked():
    for bad in (dict(max_bits=5), dict(quant_group=-1), dict(bit_cost="area"), dict(quant_prior=-1.0)):
        with pytest.raises(ConfigError):
            wb.adapt(tiny_model(), "bayesian-lora", ["0", "2"], r=4, quantize=True, **bad)


def test_off_by_default_keeps_the_unquantized_layer():
    ad = wb.adapt(tiny_model(), "bayesian-lora", ["0", "2"], r=4)
    layer = ad.layer("2")
    assert not hasattr(layer, "bit_log_alpha") and "bits_A" not in layer.inspect()
    assert layer.weights()[0] is layer.lora_A


def test_the_bit_prior_pushes_bits_down_on_a_fixed_seed():
    task = wb.tasks.get("synthetic:lowrank")
    run = wb.train(task, "bayesian-lora", steps=300, lr=3e-2, seed=0, probes=[], progress=False, r=8, prior=0.0,
                   quantize=True, quant_prior=0.1)
    bits = torch.stack([layer.bits() for _, layer in run.adaptation.named_layers()])
    assert float(bits.mean()) < 32 and float(bits.max()) < 32, bits
    assert float(bits.min()) >= 4  # the 2-bit level alone does not fit the task: its gate stays on
    assert run.summary["metric_value"] < 0.5 * run.summary["init_metric_value"]  # and it still learns


def test_the_ranks_probe_records_the_learned_bits_and_the_figure_shows_them():
    from workbench import figures

    run = wb.train("synthetic:lowrank", "bayesian-lora", steps=120, lr=3e-2, seed=0, probes=["ranks"], every=20,
                   progress=False, r=8, prior=0.0, quantize=True, quant_prior=0.1)
    layers = dict(run.adaptation.named_layers())
    fig = figures.bit_allocation(run)
    shown = fig.data[0].text  # rows: modules in the probe's order; columns: rank, bits A, bits B
    assert len(shown) == len(layers)
    for row, layer in zip(shown, layers.values()):
        assert list(row) == [float(layer.active().sum()), *layer.bits().tolist()]
    assert "bit operations" in fig.layout.title.text
    assert "learns no quantization" in figures.bit_allocation(
        wb.train("synthetic:lowrank", "lora", steps=5, probes=["ranks"], progress=False)).layout.annotations[0].text
