"""The baselines equal PEFT's implementations with the same weights (DESIGN: match PEFT's definitions)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_model

import workbench as wb


@pytest.fixture
def peft():
    """PEFT, for the tests that compare with it: only they are skipped where it is not installed."""
    return pytest.importorskip("peft")

X = torch.randn(6, 5, 32, generator=torch.Generator().manual_seed(0))


def _peft_model(peft, model, **kw):
    cfg = peft.LoraConfig(target_modules=["0", "2"], **kw)
    return peft.get_peft_model(model, cfg)


def _copy_into_peft(ad, pm, magnitude=False):
    with torch.no_grad():
        for name, layer in ad.named_layers():
            target = pm.base_model.model.get_submodule(name)
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
            if magnitude:
                target.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)


def _randomize(ad):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ad.parameters():
            if p.requires_grad:
                p.copy_(p + 0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("variant,kw", [("lora", {}), ("rslora", {"use_rslora": True}),
                                        ("dora", {"use_dora": True})])
@pytest.mark.parametrize("r,alpha", [(4, 8.0), (8, 16.0)])
def test_same_output_as_peft(variant, kw, r, alpha, peft):
    ours = tiny_model()
    ad = wb.adapt(ours, variant, ["0", "2"], r=r, alpha=alpha)
    _randomize(ad)
    pm = _peft_model(peft, tiny_model(), r=r, lora_alpha=alpha, **kw)
    _copy_into_peft(ad, pm, magnitude=variant == "dora")
    with torch.no_grad():
        torch.testing.assert_close(ad.model(X), pm(X), atol=1e-5, rtol=1e-5)


def test_dora_gradients_match_peft(peft):
    """DoRA's norm is detached in backward (paper §4.3); the gradients must agree with PEFT's too."""
    ad = wb.adapt(tiny_model(), "dora", ["0", "2"], r=4, alpha=8.0)
    _randomize(ad)
    pm = _peft_model(peft, tiny_model(), r=4, lora_alpha=8.0, use_dora=True)
    _copy_into_peft(ad, pm, magnitude=True)
    ad.model(X).square().sum().backward()
    pm(X).square().sum().backward()
    for name, layer in ad.named_layers():
        t = pm.base_model.model.get_submodule(name)
        torch.testing.assert_close(layer.lora_A.grad, t.lora_A["default"].weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.lora_B.grad, t.lora_B["default"].weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.magnitude.grad, t.lora_magnitude_vector["default"].weight.grad,
                                   atol=1e-4, rtol=1e-4)


class FixedMaskDropout(torch.nn.Dropout):
    """Dropout with one fixed mask for inputs of ``X``'s last layer widths: the same draw in both implementations."""

    def __init__(self, p: float, width: int, seed: int):
        super().__init__(p)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("mask", (torch.rand(*X.shape[:-1], width, generator=g) >= p).float() / (1 - p))

    def forward(self, x):
        return x * self.mask if self.training else x


@pytest.mark.parametrize("share", ["fixed-mask", "same-seed"])
def test_dora_with_dropout_matches_peft_in_training_mode(share, peft):
    """PEFT (and the NVlabs code) feed the same dropped-out input x̃ to (m/‖·‖ − 1)·W0 x̃ and to the LoRA branch.
    Before, our magnitude term saw the clean x: max output difference 0.60 with one shared mask at dropout 0.5.
    ``same-seed`` also checks that each layer draws its mask once, as PEFT does (the same generator state gives the
    same masks only then)."""
    ad = wb.adapt(tiny_model(), "dora", ["0", "2"], r=4, alpha=8.0, dropout=0.5)
    _randomize(ad)
    pm = _peft_model(peft, tiny_model(), r=4, lora_alpha=8.0, use_dora=True, lora_dropout=0.5)
    _copy_into_peft(ad, pm, magnitude=True)
    if share == "fixed-mask":
        for i, (name, layer) in enumerate(ad.named_layers()):
            layer.drop = FixedMaskDropout(0.5, layer.in_features, seed=10 + i)
            pm.base_model.model.get_submodule(name).lora_dropout["default"] = FixedMaskDropout(
                0.5, layer.in_features, seed=10 + i)
    ad.model.train()
    pm.train()
    torch.manual_seed(5)
    ours = ad.model(X)
    torch.manual_seed(5)
    theirs = pm(X)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    for name, layer in ad.named_layers():
        t = pm.base_model.model.get_submodule(name)
        torch.testing.assert_close(layer.magnitude.grad, t.lora_magnitude_vector["default"].weight.grad,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.lora_A.grad, t.lora_A["default"].weight.grad, atol=1e-4, rtol=1e-4)


def test_default_init_matches_peft_distribution_and_zero_b():
    ad = wb.adapt(tiny_model(), "lora", ["0", "2"], r=8)
    for _, layer in ad.named_layers():
        assert torch.count_nonzero(layer.lora_B) == 0
        bound = 1 / layer.in_features ** 0.5  # kaiming_uniform(a=sqrt(5)) on [r, in]
        assert layer.lora_A.abs().max() <= bound + 1e-6


@pytest.mark.parametrize("niter", [0, 4])
def test_pissa_matches_peft(niter, peft):
    init = "pissa" if niter == 0 else f"pissa_niter_{niter}"
    torch.manual_seed(0)
    pm = _peft_model(peft, tiny_model(), r=4, lora_alpha=8.0, init_lora_weights=init)
    torch.manual_seed(0)
    ours = tiny_model()
    x_before = ours(X)
    ad = wb.adapt(ours, "pissa", ["0", "2"], r=4, alpha=8.0, niter=niter)
    with torch.no_grad():
        torch.testing.assert_close(ad.model(X), x_before, atol=1e-5, rtol=1e-5)  # output unchanged at init
        if niter == 0:  # exact SVD: the same factors and residual as PEFT
            for name, layer in ad.named_layers():
                t = pm.base_model.model.get_submodule(name)
                torch.testing.assert_close(layer.lora_A, t.lora_A["default"].weight, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(layer.lora_B, t.lora_B["default"].weight, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(layer.base.weight, t.base_layer.weight, atol=1e-5, rtol=1e-5)
            _randomize(ad)
            _copy_into_peft(ad, pm)
            torch.testing.assert_close(ad.model(X), pm(X), atol=1e-5, rtol=1e-5)


def test_pissa_leaves_the_callers_module_untouched():
    model = tiny_model()
    w = copy.deepcopy(model[0].weight)
    ad = wb.adapt(model, "pissa", ["0"], r=4)
    assert torch.equal(ad.layer("0").base.weight, w) is False  # the layer holds the residual
    ad.remove()
    assert torch.equal(model[0].weight, w)
