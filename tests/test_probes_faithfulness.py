"""Probes against their definitions (issue 15): every trainable tensor in the gradient norms, norms before clipping,
probes that never change the run, G over repeated calls, the computational-limits normalisation, both sides of the
subspace similarity, landscape directions as the reference code builds them, and the stated limits of the maps."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import TinyTask, tiny_model
from torch import nn

import workbench as wb
import workbench.probes as probes_pkg
from workbench.probes import ProbeContext, get_probes
from workbench.probes import gradients as gradients_mod
from workbench.probes.frequency import fft_map, fourierft_coefficient_scale
from workbench.probes.gradients import full_weight_gradients
from workbench.probes.landscape import landscape, landscape_directions
from workbench.probes.spectra import subspace_similarity


def _records(out) -> dict[tuple[str, str], float]:
    return {(m, k): v for m, k, v in out.records}


# -- 1. gradient norms count every trainable tensor once ------------------------------------------------------

def _backward(ad, task):
    batch = next(task.batches())
    task.loss(ad.model, batch).backward()
    return batch


@pytest.mark.parametrize("variant,kwargs", [("uni-lora", {}), ("vera", {"r": 4}), ("lora", {"r": 4}),
                                            ("lora", {"r": 4, "modules_to_save": ["2"]})])
def test_total_gradient_norm_counts_every_trainable_tensor_once(variant, kwargs):
    task = TinyTask()
    targets = ["0"] if "modules_to_save" in kwargs else task.targets
    ad = wb.adapt(tiny_model(), variant, targets, **kwargs)
    with torch.no_grad():  # a nonzero gradient for every tensor (LoRA's A has none while B = 0)
        for p in ad.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    _backward(ad, task)
    (probe,) = get_probes(["gradients"])
    rec = _records(probe.before_step(ProbeContext(adaptation=ad, state={})))
    trainable = [p for p in ad.parameters() if p.requires_grad]
    expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in trainable))
    assert expected > 0
    assert rec[("", "grad_norm")] == pytest.approx(expected, rel=1e-5)
    per_tensor = sum(v ** 2 for (m, k), v in rec.items() if m and k.startswith("grad_norm/"))
    assert per_tensor == pytest.approx(expected ** 2, rel=1e-5)  # each tensor exactly once
    if variant == "uni-lora":  # all of Uni-LoRA's trainable tensors are shared: they were missed before
        assert rec[("shared", "grad_norm")] == pytest.approx(expected, rel=1e-5)
    if "modules_to_save" in kwargs:
        assert rec[("2", "grad_norm")] > 0


def test_uni_lora_total_gradient_norm_in_training_is_nonzero():
    run = wb.train(TinyTask(), "uni-lora", steps=11, every=10, probes=["gradients"], progress=False,
                   max_grad_norm=1e9)
    m = run.metrics
    total = m[(m.probe == "gradients") & (m.module == "") & (m.key == "grad_norm")].set_index("step").value
    clip = m[(m.probe == "train") & (m.key == "grad_norm_before_clip")].set_index("step").value
    assert (total > 0).all()
    # the probe counts the same tensors the loop clips
    for step in total.index:
        assert total[step] == pytest.approx(clip[step], rel=1e-5)


# -- 2. gradient norms are recorded before clipping --------------------------------------------------------------

def test_gradient_norms_are_recorded_before_clipping():
    def totals(**kw):
        run = wb.train(TinyTask(), "lora", steps=21, every=10, probes=["gradients"], progress=False, r=4, **kw)
        m = run.metrics
        sel = m[(m.probe == "gradients") & (m.module == "") & (m.key == "grad_norm")]
        return run, sel.set_index("step").value

    clipped_run, clipped = totals(max_grad_norm=1e-3)
    _, free = totals()
    assert list(clipped.index) == [0, 10, 20]
    assert not all(v == pytest.approx(1e-3, rel=1e-3) for v in clipped), "every recorded total is the threshold"
    assert all(v > 1e-3 for v in clipped)  # the clip acted at every probe step ...
    assert clipped[0] == pytest.approx(free[0], rel=1e-6)  # ... and step 0 (same state) reads the unclipped norm
    m = clipped_run.metrics
    before = m[(m.probe == "train") & (m.key == "grad_norm_before_clip")].set_index("step").value
    for step in clipped.index:
        assert clipped[step] == pytest.approx(before[step], rel=1e-5)


# -- 3. probes never change the run ---------------------------------------------------------------------------

class AttentionModel(nn.Module):
    """One attention head over a sequence, with dropout in the model itself (in training mode, like a Hugging Face
    model returned by ``from_pretrained`` and then trained)."""

    def __init__(self, d: int = 16, heads: int = 2, head_dim: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / d ** 0.5)
        self.drop = nn.Dropout(0.1)
        self.heads = heads
        self.config = SimpleNamespace(hidden_size=d, num_attention_heads=heads, head_dim=head_dim)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x, attention_mask=None):
        b, n, d = x.shape
        hd = d // self.heads
        q, k, v = (f(self.drop(x)).view(b, n, self.heads, hd).transpose(1, 2)
                   for f in (self.query, self.key, self.value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
        h = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        return self.out(self.drop(h))


class AttentionTask:
    """Regress a fixed random target from a masked sequence (two of every batch's sequences are padded)."""

    name = "attention-toy"
    targets = ["query", "key", "value"]
    metric = "loss"
    higher_is_better = False

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(256, 12, 16, generator=g)
        self.y = torch.randn(256, 12, 16, generator=g)
        self.mask = torch.ones(256, 12, dtype=torch.long)
        self.mask[::2, 8:] = 0

    def model(self):
        return AttentionModel().train()

    def options(self):
        return {}

    def batches(self, split="train", batch_size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        while True:
            i = torch.randint(0, len(self.x), (batch_size,), generator=g)
            yield {"x": self.x[i], "y": self.y[i], "attention_mask": self.mask[i]}

    def loss(self, model, batch):
        out = model(batch["x"], batch["attention_mask"])
        keep = batch["attention_mask"][..., None].to(out.dtype)
        return ((out - batch["y"]) ** 2 * keep).sum() / keep.sum()

    def evaluate(self, model, max_batches=None):
        with torch.no_grad():
            return {"loss": float(self.loss(model, {"x": self.x, "y": self.y, "attention_mask": self.mask}))}


def _final_state(task, probes, callback=None):
    run = wb.train(task, "lora", steps=21, every=10, probes=probes, progress=False, callback=callback, r=4,
                   dropout=0.1)
    return run, {k: v.clone() for k, v in run.adaptation.adapter_state().items()}


@pytest.mark.parametrize("probe", ["spectra", "frequency", "ranks", "gradients", "limits"])
def test_a_probe_does_not_change_the_run(probe):
    task = AttentionTask()
    _, without = _final_state(task, ())
    run, with_probe = _final_state(task, [probe])
    assert (run.metrics.probe == probe).any(), "the probe recorded nothing: the comparison would be vacuous"
    for key, value in without.items():
        assert torch.equal(value, with_probe[key]), f"{probe} changed {key}"


def test_the_gradients_probe_does_not_change_a_run_that_samples_its_update():
    """Bayesian-LoRA samples its rank gates in the training forward pass: the probe reads ΔW before and after the step
    (``delta_weight()`` uses the deterministic test-time gates), consuming no random numbers."""
    def final(probes):
        run = wb.train(TinyTask(), "bayesian-lora", steps=21, every=10, probes=probes, progress=False, r=4)
        return run, {k: v.clone() for k, v in run.adaptation.adapter_state().items()}

    _, without = final(())
    run, with_probe = final(["gradients"])
    assert (run.metrics.key == "step_grad_cosine").any()
    for key, value in without.items():
        assert torch.equal(value, with_probe[key]), f"gradients changed {key}"


def test_a_landscape_computed_during_training_does_not_change_the_run():
    task = TinyTask()

    def look(event):
        if event.type == "progress":
            landscape(event.run.adaptation, task, dims=1, steps=3)

    _, without = _final_state(task, ())
    _, looked = _final_state(task, (), callback=look)
    for key, value in without.items():
        assert torch.equal(value, looked[key]), f"the landscape changed {key}"


# -- 4. a layer called twice per forward ------------------------------------------------------------------------

class Tied(nn.Module):
    """The same linear layer applied twice (weight sharing across depth, as in ALBERT)."""

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        return self.head(torch.tanh(self.shared(h)))


def test_full_weight_gradient_sums_over_every_call_of_a_layer():
    torch.manual_seed(0)
    model = Tied()
    ad = wb.adapt(model, "lora", ["shared"], r=4)
    with torch.no_grad():
        ad.layer("shared").lora_B.normal_()
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    task = SimpleNamespace(loss=lambda m, b: nn.functional.mse_loss(m(b["x"]), b["y"]))
    grads = full_weight_gradients(ad, task, {"x": x, "y": y})

    plain = Tied()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("inp.", "head."))},
                          strict=False)
    with torch.no_grad():
        plain.shared.weight.copy_(ad.layer("shared").effective_weight())
        plain.shared.bias.copy_(ad.layer("shared").bias)
    plain.shared.weight.requires_grad_(True)
    nn.functional.mse_loss(plain(x), y).backward()
    torch.testing.assert_close(grads["shared"], plain.shared.weight.grad, atol=1e-6, rtol=1e-5)


# -- 5. the computational-limits probe ---------------------------------------------------------------------------

def _limits(model, targets, batch):
    ad = wb.adapt(model, "lora", targets, r=2)
    task = SimpleNamespace(loss=lambda m, b: m(b["x"], b.get("attention_mask")).square().mean())
    (probe,) = get_probes(["limits"])
    return ad, _records(probe.after_step(ProbeContext(adaptation=ad, task=task, batch=batch, state={})))


def test_limits_factor_includes_the_bias_and_leaves_out_padding():
    model = AttentionModel()
    with torch.no_grad():
        model.query.bias.fill_(3.0)  # a bias larger than any x W0ᵀ entry
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    x[1, 6:] = 100.0  # padding with huge activations: the softmax never attends to them
    model.eval()
    _, rec = _limits(model, ["query", "key"], {"x": x, "attention_mask": mask})
    q = x @ model.query.weight.t() + model.query.bias  # ΔW = 0 at init
    real = [q[0].abs().max(), q[1, :6].abs().max()]
    assert rec[("query", "max_logit_factor")] == pytest.approx(float(max(real)), rel=1e-5)
    assert rec[("query", "padding_excluded")] == 1.0
    assert rec[("query", "sequence_length")] == 10
    # each sequence against its own real length
    expected = max(float(real[0]) / math.sqrt(math.log(10)), float(real[1]) / math.sqrt(math.log(6)))
    assert rec[("query", "ratio_to_sqrt_log_L")] == pytest.approx(expected, rel=1e-5)
    assert rec[("query", "max_abs_input")] == pytest.approx(float(x[0].abs().max().clamp(min=x[1, :6].abs().max())),
                                                            rel=1e-6)


@pytest.mark.parametrize("head_dim", [None, 4])
def test_limits_head_scaling_is_alman_and_songs(head_dim):
    """The model's exp(Q_h K_hᵀ/√d) equals exp(Q'K'ᵀ/d) with Q' = d^{1/4} Q_h (Alman & Song's convention): the
    scaled ratio is max|Q'| / √ln L, with d = ``config.head_dim`` when the config sets it."""
    model = AttentionModel(d=16, heads=2, head_dim=head_dim).eval()
    x = torch.randn(3, 9, 16)
    _, rec = _limits(model, ["query", "key"], {"x": x})
    d = head_dim or 8
    q = x @ model.query.weight.t() + model.query.bias
    k = x @ model.key.weight.t() + model.key.bias
    qh, kh = q[..., :8], k[..., :8]  # the first head of the model's own split
    q_as, k_as = d ** 0.25 * qh, d ** 0.25 * kh
    if head_dim is None:  # the identity that defines the convention, on the model's real head size
        torch.testing.assert_close(q_as @ k_as.transpose(-1, -2) / d, qh @ kh.transpose(-1, -2) / math.sqrt(d))
    gamma = math.sqrt(math.log(9))
    assert rec[("query", "ratio_to_sqrt_log_L_scaled")] == pytest.approx(
        float((d ** 0.25 * q).abs().max()) / gamma, rel=1e-5)
    assert rec[("query", "ratio_to_sqrt_log_L_folded")] == pytest.approx(
        float((d ** -0.25 * q).abs().max()) / gamma, rel=1e-5)


def test_limits_probe_on_a_hugging_face_encoder_reads_its_mask_and_config():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = transformers.BertModel(cfg).eval()
            for p in self.encoder.parameters():
                p.requires_grad_(False)

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    model = Classifier()
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 5:] = 0
    seen = {}
    query = model.encoder.encoder.layer[0].attention.self.query
    handle = query.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o.detach()))
    model(ids, mask)
    handle.remove()
    ad = wb.adapt(model, "lora", ["query", "key"], r=2)
    task = SimpleNamespace(loss=lambda m, b: m(b["input_ids"], b["attention_mask"]).square().mean())
    (probe,) = get_probes(["limits"])
    rec = _records(probe.after_step(ProbeContext(adaptation=ad, task=task, batch={"input_ids": ids,
                                                                                  "attention_mask": mask}, state={})))
    name = "encoder.encoder.layer.0.attention.self.query"
    q = seen["q"]
    expected = max(float(q[0, :5].abs().max()) / math.sqrt(math.log(5)), float(q[1].abs().max()) / math.sqrt(
        math.log(12)))
    assert rec[(name, "ratio_to_sqrt_log_L")] == pytest.approx(expected, rel=1e-5)
    assert rec[(name, "ratio_to_sqrt_log_L_scaled")] == pytest.approx(expected * 8 ** 0.25, rel=1e-5)  # d_head 8
    assert rec[(name, "padding_excluded")] == 1.0


# -- 6. subspace similarity on both sides -----------------------------------------------------------------------

def test_subspace_similarity_records_the_right_side_too():
    g = torch.Generator().manual_seed(0)
    ad = wb.adapt(tiny_model(), "lora", ["0"], r=2)
    layer = ad.layer("0")
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(64, 2, generator=g))
        layer.lora_A.copy_(torch.randn(2, 32, generator=g))  # V₂ᵀ: a random right subspace
    delta = layer.delta_weight().detach()
    u = layer.factors()[0].detach()
    reference = {"0": u @ torch.randn(2, 32, generator=g)}  # ΔW* = U Vᵀ: the same left subspace, another right one
    (probe,) = get_probes(["spectra"])
    rec = _records(probe.after_step(ProbeContext(adaptation=ad, reference=reference, state={})))
    assert rec[("0", "subspace_similarity")] == pytest.approx(1.0, abs=1e-4)  # the left φ cannot tell them apart
    assert rec[("0", "subspace_similarity_right")] < 0.5
    assert rec[("0", "subspace_similarity_min")] == rec[("0", "subspace_similarity_right")]
    assert rec[("0", "rel_error")] > 1.0
    assert subspace_similarity(delta, reference["0"], 2, 2, side="right") == pytest.approx(
        rec[("0", "subspace_similarity_right")], rel=1e-5)
    assert subspace_similarity(delta, delta.clone(), 2, 2, side="right") == pytest.approx(1.0, abs=1e-4)


# -- 7. landscapes -------------------------------------------------------------------------------------------------

def _trained(variant, **kw):
    ad = wb.adapt(tiny_model(), variant, ["0", "2"], **kw)
    with torch.no_grad():
        for p in ad.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return ad


def test_landscape_1d_tensors_follow_the_reference_code():
    ad = _trained("dora", r=4)
    params = {n: p.detach() for n, p in ad.model.named_parameters() if p.requires_grad}
    one_d = [n for n, p in params.items() if p.dim() == 1]
    assert one_d  # DoRA's magnitudes
    default = landscape_directions(ad)[1][0]
    zero = landscape_directions(ad, ignore_1d="zero")[1][0]
    copy = landscape_directions(ad, ignore_1d="copy")[1][0]
    rescale = landscape_directions(ad, ignore_1d="rescale")[1][0]
    for n in one_d:
        assert torch.equal(default[n], zero[n]) and not zero[n].any()  # the reference's ignore='biasbn'
        assert torch.equal(copy[n], params[n])  # the reference's d.copy_(w)
        assert float(rescale[n].norm()) == pytest.approx(float(params[n].norm()), rel=1e-5)
    for n in set(params) - set(one_d):  # ≥2-D tensors do not depend on the choice
        assert torch.equal(zero[n], rescale[n]) and torch.equal(zero[n], copy[n])


def test_landscape_on_only_1d_tensors_needs_a_choice_and_copy_reaches_the_base_model():
    task = TinyTask()
    ad = _trained("vera", r=4)
    batch = next(task.batches("val", batch_size=256))
    with pytest.raises(wb.ConfigError, match="ignore_1d"):
        landscape(ad, task, dims=1, steps=3, batch=batch)
    res = landscape(ad, task, dims=1, steps=3, batch=batch, ignore_1d="copy")
    with torch.no_grad(), ad.disabled():
        base_loss = float(task.loss(ad.model, batch))
    assert res["loss"][0] == pytest.approx(base_loss, rel=1e-5)  # α = −1 scales VeRA's vectors to zero: ΔW = 0


def test_landscape_delta_mode_moves_by_the_update_not_the_weight():
    """loss(W) = ‖I Wᵀ − I W_trainedᵀ‖_F² on the identity input is ‖α d‖_F²: at α = 1 it reads the direction's size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64))
    for p in model.parameters():
        p.requires_grad_(False)
    ad = wb.adapt(model, "lora", ["0"], r=4)
    with torch.no_grad():
        ad.layer("0").lora_B.normal_(std=0.02)  # an update much smaller than W0, as in a fine-tune
        eye = torch.eye(32)
        trained = model(eye).clone()
    task = SimpleNamespace(loss=lambda m, b: ((m(b["x"]) - trained) ** 2).sum())
    delta = ad.layer("0").delta_weight().detach()
    w = ad.layer("0").effective_weight().detach()
    assert float(delta.norm()) < 0.5 * float(w.norm())  # the two modes are distinguishable here
    for mode, size in (("delta", delta), ("merged", w)):
        res = landscape(ad, task, mode=mode, dims=1, steps=3, span=1.0, batch={"x": eye})
        assert res["loss"][2] == pytest.approx(float(size.pow(2).sum()), rel=1e-4), mode
    _, (direction,) = landscape_directions(ad, mode="delta")
    torch.testing.assert_close(direction["0.base.weight"].norm(dim=1), delta.norm(dim=1))
    with pytest.raises(wb.ConfigError, match="ignore_1d"):
        landscape(ad, task, mode="adapter", dims=1, steps=3, batch={"x": eye}, ignore_1d="bias")


# -- 8. the stated limits of the maps and of G --------------------------------------------------------------------

def test_fft_map_scale_of_a_fourierft_coefficient_is_stated():
    ad = wb.adapt(tiny_model(), "fourierft", ["0"], n_frequency=1, scaling=150.0)
    layer = ad.layer("0")
    (j, k), c = layer.entries[:, 0].tolist(), float(layer.spectrum.detach()[0])
    m, n = 64, 32
    fmap = fft_map(layer.delta_weight().detach())
    shifted = ((j + m // 2) % m, (k + n // 2) % n)
    mirrored = (((-j) % m + m // 2) % m, ((-k) % n + n // 2) % n)
    factor = fourierft_coefficient_scale((m, n), 150.0)
    assert shifted != mirrored  # the real part splits c between (j, k) and (−j, −k)
    assert float(fmap[shifted]) * factor == pytest.approx(abs(c), rel=1e-4)
    assert float(fmap[mirrored]) * factor == pytest.approx(abs(c), rel=1e-4)


def test_probe_docs_state_what_they_cannot_measure():
    assert "Conv1D" in probes_pkg.__doc__ and "nn.Linear" in probes_pkg.__doc__
    assert "regulariser" in gradients_mod.__doc__ and "∂L_task/∂W" in gradients_mod.__doc__
    from workbench.probes import frequency

    assert "2√(mn)" in frequency.__doc__
