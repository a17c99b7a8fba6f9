"""Probes against references: exact spectra, rank measures, similarity, intruders, frequency maps, gradients,
landscapes."""

from __future__ import annotations

import math

import pytest
import scipy.fft
import torch
from conftest import TinyTask, tiny_model

import workbench as wb
from workbench.probes import ProbeContext, get_probes
from workbench.probes.frequency import dct_map, wht_map
from workbench.probes.gradients import full_weight_gradients
from workbench.probes.landscape import landscape
from workbench.probes.spectra import (
    effective_rank,
    intruder_dimensions,
    singular_values,
    stable_rank,
    subspace_similarity,
)


def _lora(r=4):
    ad = wb.adapt(tiny_model(), "lora", ["0", "2"], r=r)
    with torch.no_grad():
        for _, layer in ad.named_layers():
            layer.lora_B.normal_()
    return ad


@pytest.mark.parametrize("variant", ["lora", "dora", "full"])
def test_spectra_equal_dense_svdvals(variant):
    ad = wb.adapt(tiny_model(), variant, ["0", "2"], **({} if variant == "full" else {"r": 4}))
    with torch.no_grad():
        for p in ad.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    for _, layer in ad.named_layers():
        dense = torch.linalg.svdvals(layer.delta_weight().detach())
        s = singular_values(layer)
        torch.testing.assert_close(s, dense[:len(s)], atol=1e-4, rtol=1e-4)
        assert dense[len(s):].abs().max() < 1e-4 if len(s) < len(dense) else True


def test_rank_measures_on_known_spectra():
    assert effective_rank(torch.ones(5)) == pytest.approx(5)
    assert effective_rank(torch.tensor([1.0, 0, 0])) == pytest.approx(1)
    assert stable_rank(torch.tensor([2.0, 2.0, 0.0])) == pytest.approx(2)
    assert stable_rank(torch.tensor([1.0, 0.5])) == pytest.approx(1.25)


def test_subspace_similarity_bounds():
    q = torch.linalg.qr(torch.randn(20, 20)).Q
    a = q[:, :3] @ torch.randn(3, 10)
    b = q[:, 3:6] @ torch.randn(3, 10)
    assert subspace_similarity(a, a, 3, 3) == pytest.approx(1, abs=1e-5)
    assert subspace_similarity(a, b, 3, 3) == pytest.approx(0, abs=1e-5)


def test_intruder_dimensions():
    w0 = torch.diag(torch.linspace(3, 1, 16))
    assert intruder_dimensions(w0, w0.clone(), k=5) == 0
    v = torch.ones(16) / 4  # a direction far from every coordinate axis (W0's singular vectors)
    assert intruder_dimensions(w0, w0 + 10 * torch.outer(v, v), k=5) >= 1


def test_dct_and_wht_maps_find_single_atoms():
    coeffs = torch.zeros(16, 32)
    coeffs[3, 7] = 2.0
    atom = torch.from_numpy(scipy.fft.idctn(coeffs.double().numpy(), norm="ortho")).float()
    m = dct_map(atom)
    assert int((m > 1e-5).sum()) == 1 and m[3, 7] == pytest.approx(2.0, rel=1e-5)
    h16 = torch.from_numpy(__import__("scipy.linalg").linalg.hadamard(16)).float() / 4
    h32 = torch.from_numpy(__import__("scipy.linalg").linalg.hadamard(32)).float() / math.sqrt(32)
    atom = h16 @ coeffs @ h32
    m = wht_map(atom)
    assert int((m > 1e-5).sum()) == 1 and m[3, 7] == pytest.approx(2.0, rel=1e-5)


def test_full_weight_gradient_matches_autograd():
    task = TinyTask()
    batch = next(task.batches())
    ad = _lora()
    grads = full_weight_gradients(ad, task, batch)
    # reference: the same model with plain weights W0 + ΔW, differentiated directly
    plain = tiny_model()
    with torch.no_grad():
        for name, layer in ad.named_layers():
            plain.get_submodule(name).weight.copy_(layer.effective_weight())
    for p in plain.parameters():
        p.requires_grad_(True)
    task.loss(plain, batch).backward()
    for name in ("0", "2"):
        torch.testing.assert_close(grads[name], plain.get_submodule(name).weight.grad, atol=1e-5, rtol=1e-4)


def test_full_fine_tuning_with_sgd_steps_along_the_gradient():
    task = TinyTask()
    batch = next(task.batches())
    ad = wb.adapt(task.model(), "full", task.targets)
    opt = torch.optim.SGD(ad.parameters(), lr=0.1)
    (probe,) = get_probes(["gradients"])
    ctx = ProbeContext(adaptation=ad, task=task, batch=batch, state={})
    task.loss(ad.model, batch).backward()
    probe.before_step(ctx)
    opt.step()
    out = probe.after_step(ctx)
    cosines = [v for (_, k, v) in out.records if k == "step_grad_cosine"]
    assert cosines and all(c == pytest.approx(1.0, abs=1e-4) for c in cosines)


def test_default_probes_record_per_module_values():
    run = wb.train(TinyTask(), "lora", steps=20, every=10, progress=False, r=4)
    keys = set(run.metrics.key)
    assert {"effective_rank", "stable_rank", "subspace_similarity", "rank", "grad_norm", "step_grad_cosine",
            "dct_top1pct_energy"} <= keys
    assert run.snapshot("spectra", "singular_values", "0") is not None
    assert run.snapshot_steps("frequency", "dct", "2") == [0, 10, 19]


def test_unknown_probe_is_a_config_error():
    with pytest.raises(wb.ConfigError, match="did you mean spectra"):
        get_probes(["spectr"])


def test_landscape_interpolation_ends_at_init_and_trained_losses():
    task = TinyTask()
    init_state = {}

    def grab(event):
        if event.type == "start":
            ad = event.run.adaptation
            ids = {id(p) for p in ad.parameters() if p.requires_grad}
            init_state.update({n: p.detach().clone() for n, p in ad.model.named_parameters() if id(p) in ids})

    run = wb.train(task, "lora", steps=50, probes=(), progress=False, callback=grab, r=4)
    batch = next(task.batches("val", batch_size=256))
    res = landscape(run.adaptation, task, dims=1, steps=11, batch=batch, init_state=init_state)
    with torch.no_grad():
        trained = float(task.loss(run.adaptation.model, batch))
    assert res["interpolation"][-1] == pytest.approx(trained, rel=1e-5)
    assert res["loss"][5] == pytest.approx(trained, rel=1e-5)  # the centre of the random slice
    assert res["interpolation"][0] > res["interpolation"][-1]  # training lowered the loss
    two = landscape(run.adaptation, task, dims=2, steps=5, batch=batch, mode="delta")
    assert two["loss"].shape == (5, 5) and two["loss"][2, 2] == pytest.approx(trained, rel=1e-4)
    with pytest.raises(wb.ConfigError, match="dims"):
        landscape(run.adaptation, task, dims=3)


def test_limits_probe_reads_attention_norms():
    from torch import nn

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.out = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            return self.out(self.query(x) + self.key(x))

    class SeqTask:
        def loss(self, model, batch):
            return model(batch["x"]).square().mean()

    model = Attn()
    ad = wb.adapt(model, "lora", ["query", "key", "out"], r=2)
    x = torch.randn(3, 10, 16)
    (probe,) = get_probes(["limits"])
    out = probe.after_step(ProbeContext(adaptation=ad, task=SeqTask(), batch={"x": x}, state={}))
    rec = {(m, k): v for m, k, v in out.records}
    assert {m for m, _ in rec} == {"query", "key"}  # only attention projections
    # ΔW = 0 at init: W̃ = W0; the bias is part of the factor the softmax sees
    expected = float((x @ model.query.weight.t() + model.query.bias).abs().max())
    assert rec[("query", "max_logit_factor")] == pytest.approx(expected, rel=1e-5)
    assert rec[("query", "ratio_to_sqrt_log_L")] == pytest.approx(expected / math.sqrt(math.log(10)), rel=1e-5)
    assert rec[("query", "delta_spectral_norm")] == 0.0
