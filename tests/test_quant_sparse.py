"""Evidence for the shared quantizer (workbench.quant), LQ-LoRA and SLTrain (issue 20, first part): NF levels and
storage, the decomposition's error path, the ILP's budget and optimality, Fisher weighting, save/load of Q and of
SLTrain's support, and SLTrain's low-rank/sparse split on synthetic:lowrank+sparse. The conformance matrix covers
both variants' layer contract (tests/test_conformance.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import TinyTask, tiny_model

import workbench as wb
from workbench import quant, rng
from workbench.events import StepContext
from workbench.quant import NFConfig, bits_per_parameter, nf_quantize, normal_float_levels
from workbench.variants.quant import lq_lora

X = torch.randn(6, 32, generator=torch.Generator().manual_seed(5))

# bitsandbytes' NF4 table (QLoRA, Dettmers et al. 2023, Appendix E), to the 4 decimals printed there
NF4_TABLE = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0, 0.0796, 0.1609, 0.2461, 0.3379,
             0.4407, 0.5626, 0.7230, 1.0]


def spread_matrix(n: int = 384, seed: int = 0) -> torch.Tensor:
    """A MiniLM-sized (384×384) weight with a decaying spectrum (σ from 3.2 to 0.03, log-spaced)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(n, n, generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, n, generator=g)).Q
    return (u * torch.logspace(0.5, -1.5, n)) @ v.t()


def minilm_query() -> torch.Tensor:
    """The real all-MiniLM-L6-v2 layer-0 query weight (384×384), read alone from the packaged safetensors."""
    from safetensors import safe_open

    from workbench.tasks.text import packaged_minilm_path

    with safe_open(f"{packaged_minilm_path()}/model.safetensors", "pt") as f:
        return f.get_tensor("encoder.layer.0.attention.self.query.weight").float()


# ------------------------------------------------------------------------------------------------ the quantizer


def test_qwha_uses_the_shared_quantizer():
    from workbench.variants.frequency import qwha

    assert qwha.quantize is quant.quantize and qwha.nf_levels is quant.nf_levels


def test_nf4_levels_are_qlora_s():
    torch.testing.assert_close(normal_float_levels(4), torch.tensor(NF4_TABLE), atol=6e-5, rtol=0)
    for b in (2, 3, 8):
        levels = normal_float_levels(b)
        assert len(levels) == 2 ** b and (levels.diff() > 0).all() and levels[0] == -1 and levels[-1] == 1
        assert (levels == 0).sum() == 1


def test_nf_quantize_takes_the_nearest_level_of_the_double_quantized_block_scale():
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(1))  # 960 entries: the last block is padded
    cfg = NFConfig(bits=3, bits0=4, block0=16, block1=16)
    q = nf_quantize(w, cfg)
    scales = quant.double_quantized_scales(w, cfg)
    flat = torch.nn.functional.pad(w.reshape(-1), (0, (-w.numel()) % 16)).view(-1, 16)
    true = flat.abs().amax(1)
    # b0 = 4 unsigned bits on s − min(s) in blocks of 16 scales: within half a step of the true absmax
    shifted = torch.nn.functional.pad(true - true.min(), (0, (-len(true)) % 16)).view(-1, 16)
    step = shifted.amax(1).repeat_interleave(16)[:len(true)] / 15
    assert ((scales - true).abs() <= step / 2 + 1e-6).all()
    # the reference: argmin over all levels of |x − level·scale|, computed by brute force
    candidates = normal_float_levels(3)[None, None, :] * scales[:, None, None]
    ref = candidates.squeeze(1)[torch.arange(len(scales))[:, None],
                                (flat[..., None] - candidates).abs().argmin(-1)]
    torch.testing.assert_close(q, ref.reshape(-1)[:w.numel()].view(w.shape), atol=1e-6, rtol=0)
    errors = [float((nf_quantize(w, NFConfig(b, 8, 16, 16)) - w).norm()) for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0


def test_bits_per_parameter_counts_the_scales():
    assert bits_per_parameter(NFConfig(4, 8, 64, 256)) == 4 + 8 / 64 + 32 / (64 * 256)  # QLoRA's 4.127
    assert bits_per_parameter(NFConfig(3, 8, 64, 256, "bf16")) == 3 + 8 / 64 + 16 / (64 * 256)
    cfg = NFConfig(2, 3, 32, 16)
    numel = 32 * 16 * 1000  # a whole number of blocks: exact up to the one fp32 offset
    assert quant.storage_bits(numel, cfg) == numel * bits_per_parameter(cfg) + 32
    with pytest.raises(wb.ConfigError, match="dtype1"):
        NFConfig(4, 8, 64, 256, "fp8")


# ------------------------------------------------------------------------------------------------------ LQ-LoRA


@pytest.mark.parametrize("source,bits", [("minilm", 2), ("minilm", 3), ("minilm", 4), ("spread", 3)])
def test_decomposition_error_falls_until_the_stop_and_beats_quantize_then_zero_lora(source, bits):
    w = minilm_query() if source == "minilm" else spread_matrix()
    cfg = NFConfig(bits, 8, 64, 256)
    with rng.seeded(0):
        d = lq_lora.decompose(w, 8, cfg, iters=50)
    e = d.errors
    assert all(b < a for a, b in zip(e[:-2], e[1:-1])), e  # strictly falling until the last
    assert len(e) < 50 and e[-1] >= e[-2], e             # ... which is the rise that stopped it
    # the returned state is the best iterate, recomputed here from its parts
    assert float(torch.linalg.matrix_norm(w - d.q - d.l1 @ d.l2)) == pytest.approx(min(e), rel=1e-5)
    torch.testing.assert_close(d.q, nf_quantize(w - d.l1 @ d.l2, cfg))
    qlora = float(torch.linalg.matrix_norm(w - nf_quantize(w, cfg)))  # quantize W, then a zero-initialised LoRA
    assert min(e) < 0.95 * qlora, (min(e), qlora)


def test_layer_starts_at_the_decomposition_and_trains_only_the_lora():
    lin = torch.nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(spread_matrix(64)[:48])
    ad = wb.adapt(torch.nn.Sequential(lin), "lq-lora", ["0"], seed=0, r=4, bits=3, block0=16, block1=16)
    layer = ad.layer("0")
    assert layer.pretrained_weight() is layer.W0 and torch.equal(layer.W0, lin.weight)
    residual = float(torch.linalg.matrix_norm(lin.weight - layer.effective_weight().detach()))
    assert residual == pytest.approx(min(layer.errors), rel=1e-4)
    assert residual < float(torch.linalg.matrix_norm(lin.weight - nf_quantize(lin.weight, layer.nf_config)))
    assert ad.num_trainable() == 4 * (64 + 48)  # r(d_in + d_out)
    assert sorted(n.rpartition(".")[2] for n, p in ad.named_parameters() if p.requires_grad) == ["lora_A", "lora_B"]


def test_num_trainable_is_the_papers_formula_on_tiny_model():
    ad = wb.adapt(tiny_model(), "lq-lora", ["0", "2"], r=3, block0=16, block1=16)
    assert ad.num_trainable() == 3 * (32 + 64) + 3 * (64 + 32)
    ad = wb.adapt(tiny_model(), "sltrain", ["0", "2"], r=3, delta=0.1)
    assert ad.num_trainable() == 3 * (32 + 64) + 3 * (64 + 32) + 2 * round(0.1 * 32 * 64)


def _mixed_model() -> torch.nn.Module:
    """Three 64×64 layers that quantization treats differently: a wide spectrum, Gaussian noise, heavy tails."""
    g = torch.Generator().manual_seed(2)
    m = torch.nn.Sequential(*(torch.nn.Linear(64, 64) for _ in range(3)))
    with torch.no_grad():
        m[0].weight.copy_(3 * spread_matrix(64, seed=3))
        m[1].weight.copy_(0.1 * torch.randn(64, 64, generator=g))
        m[2].weight.copy_(0.1 * torch.distributions.StudentT(2.0).sample((64, 64)))
    return m


def test_ilp_meets_the_budget_is_optimal_and_beats_uniform():
    ad = wb.adapt(_mixed_model(), "lq-lora", ["0", "1", "2"], seed=0, r=4, bits=3, block1=16, iters=20)
    grid = lq_lora.candidate_grid(ad.variant.config)
    assert len(grid) == 12 and NFConfig(3, 8, 64, 16) in grid
    with rng.seeded(1):
        _, errors = lq_lora.error_table(ad, grid)
    bits = np.array([bits_per_parameter(c) for c in grid])
    budget = bits_per_parameter(NFConfig(3, 8, 64, 16))  # what the uniform 3-bit configuration costs
    choice = lq_lora.allocate(errors, [4096] * 3, bits, budget)
    assert bits[choice].mean() <= budget + 1e-12
    # optimal: the best of all 12³ assignments within the budget, by enumeration
    best = min(sum(errors[i, c] for i, c in enumerate(cs)) for cs in itertools.product(range(12), repeat=3)
               if bits[list(cs)].mean() <= budget + 1e-12)
    assert sum(errors[i, c] for i, c in enumerate(choice)) == pytest.approx(best, rel=1e-9)
    uniform = errors[:, grid.index(NFConfig(3, 8, 64, 16))].sum()
    assert best < 0.97 * uniform, (best, uniform)
    assert len(set(choice.tolist())) > 1  # mixed precision, not the uniform one again
    with pytest.raises(wb.ConfigError, match="bit_budget"):
        lq_lora.allocate(errors, [4096] * 3, bits, 2.0)


def test_prepare_allocates_bits_and_a_saved_adapter_rebuilds_the_same_q(tmp_path):
    task = TinyTask()
    cfg = {"r": 2, "bits": 3, "block0": 16, "block1": 16, "iters": 10, "bit_budget": 3.3, "fisher_batches": 2}
    ad = wb.adapt(task.model(), "lq-lora", task.targets, seed=0, **cfg)
    ad.variant.prepare(StepContext.standalone(ad, total_steps=5, task=task), task.batches(seed=0))
    chosen = ad.variant.allocation
    sizes = {n: l.W0.numel() for n, l in ad.named_layers()}
    assert sum(bits_per_parameter(c) * sizes[n] for n, c in chosen.items()) <= 3.3 * sum(sizes.values()) + 1e-9
    assert {n: l.nf_config for n, l in ad.named_layers()} == chosen
    for p in ad.model.parameters():  # Fisher's gradients left nothing behind
        assert p.grad is None and (p.requires_grad == any(p is q for q in ad.parameters() if q.requires_grad))
    with torch.no_grad():
        for p in ad.parameters():
            if p.requires_grad:
                p.add_(0.01)
        expected = ad.model(X)
    ad.save(tmp_path / "a")
    state = {k: v for _, l in ad.named_layers() for k, v in l.adapter_state().items()}
    assert max(v.numel() for v in state.values()) < 32 * 64  # no dense Q or W0 is saved
    ad2 = wb.load_adaptation(task.model(), tmp_path / "a")
    for (_, a), (_, b) in zip(ad.named_layers(), ad2.named_layers()):
        assert a.nf_config == b.nf_config and torch.equal(a.base.weight, b.base.weight)
    with torch.no_grad():
        torch.testing.assert_close(ad2.model(X), expected, atol=1e-6, rtol=1e-6)


def test_fisher_weighted_decomposition_lowers_the_weighted_error():
    w = spread_matrix(64, seed=4)
    g = torch.Generator().manual_seed(6)
    fisher = torch.rand(64, 1, generator=g) ** 4 * torch.rand(1, 64, generator=g) ** 4 * 100  # very uneven
    row, col = lq_lora.fisher_scales(fisher)
    cfg = NFConfig(2, 8, 16, 16)

    def weighted(d):
        return float((row[:, None] * (w - d.q - d.l1 @ d.l2) * col[None, :]).norm())

    with rng.seeded(0):
        plain = lq_lora.decompose(w, 4, cfg, iters=30)
        fw = lq_lora.decompose(w, 4, cfg, iters=30, row_weight=row, col_weight=col)
    assert weighted(fw) < 0.9 * weighted(plain), (weighted(fw), weighted(plain))
    assert fw.error == pytest.approx(weighted(fw), rel=1e-5)


def test_fisher_information_is_the_mean_squared_gradient_of_the_full_precision_model():
    task = TinyTask()
    ad = wb.adapt(task.model(), "lq-lora", task.targets, seed=0, r=2, bits=2, block0=16, block1=16)
    batches = list(itertools.islice(task.batches(seed=3), 2))
    quantized = {n: ad.layer(n).base.weight.clone() for n in task.targets}
    fisher = lq_lora.fisher_information(ad, task, iter(batches), 2)
    ref = task.model()
    for p in ref.parameters():
        p.requires_grad_(True)
    expect = {n: torch.zeros(ref.get_submodule(n).weight.shape) for n in task.targets}
    for b in batches:
        grads = torch.autograd.grad(task.loss(ref, b), [ref.get_submodule(n).weight for n in task.targets])
        for n, gr in zip(task.targets, grads):
            expect[n] += gr ** 2 / 2
    for n in task.targets:
        torch.testing.assert_close(fisher[n], expect[n], atol=1e-8, rtol=1e-4)
        assert torch.equal(ad.layer(n).base.weight, quantized[n])  # the bases hold Q again


# ------------------------------------------------------------------------------------------------------ SLTrain


def test_sltrain_support_is_regenerated_not_stored(tmp_path):
    model = tiny_model()
    ad = wb.adapt(model, "sltrain", ["0", "2"], seed=4, r=2, delta=0.1)
    layers = dict(ad.named_layers())
    for layer in layers.values():
        n = layer.out_features * layer.in_features
        assert len(layer.support) == round(0.1 * n) == len(torch.unique(layer.support))
        assert 0 <= int(layer.support.min()) and int(layer.support.max()) < n
    assert not torch.equal(layers["0"].support[:50], layers["2"].support[:50])  # each layer its own draw
    with torch.no_grad():
        for layer in layers.values():
            layer.sparse_values.normal_()
    ad.save(tmp_path / "s")
    state = {k: v for layer in layers.values() for k, v in layer.adapter_state().items()}
    assert all(v.dtype != torch.bool and v.numel() < 32 * 64 for v in state.values()), {k: v.shape for k, v in
                                                                                          state.items()}
    assert "support" not in {k.rpartition(".")[2] for k in state}
    ad2 = wb.load_adaptation(tiny_model(), tmp_path / "s")
    for n, layer in ad2.named_layers():
        assert torch.equal(layer.support, layers[n].support)
        torch.testing.assert_close(layer.sparse(), layers[n].sparse())


def test_sltrain_sparse_gradient_is_the_weight_gradient_on_the_support():
    lin = torch.nn.Linear(12, 10)
    for p in lin.parameters():
        p.requires_grad_(False)
    ad = wb.adapt(torch.nn.Sequential(lin), "sltrain", ["0"], seed=0, r=2, delta=0.2)
    layer = ad.layer("0")
    x = torch.randn(7, 12, generator=torch.Generator().manual_seed(0))
    layer(x).pow(2).sum().backward()
    w = layer.effective_weight().detach().requires_grad_(True)
    torch.nn.functional.linear(x, w, lin.bias).pow(2).sum().backward()
    torch.testing.assert_close(layer.sparse_values.grad, w.grad.reshape(-1)[layer.support])


def test_sltrain_from_scratch_starts_from_zero_weights():
    task = wb.tasks.get("synthetic:lowrank", dim=16, n_train=256, n_val=64)
    model = task.model()
    original = model.get_submodule("layers.0")
    w0 = original.weight.clone()
    ad = wb.adapt(model, "sltrain", task.targets, seed=0, r=2, delta=0.1, from_scratch=True)
    layer = ad.layer("layers.0")
    assert torch.equal(layer.base.weight, torch.zeros_like(w0))
    assert torch.equal(original.weight, w0)  # zeroed in the layer's own copy
    assert layer.sparse_values.abs().max() <= 1 / 16 ** 0.5 and layer.sparse_values.abs().min() > 0
    torch.testing.assert_close(layer.update(), layer.effective_weight())
    assert torch.equal(layer.effective_weight(), layer.sparse())  # B = 0: the student is S alone at init
    restored = ad.remove()
    assert torch.equal(restored.get_submodule("layers.0").weight, w0)


@pytest.mark.slow  # two 300-step runs: ~6 s on one thread
def test_sltrain_splits_head_and_tail_and_beats_a_sparse_only_update():
    """On synthetic:lowrank+sparse (rank 4 + 32 random entries per 32×32 layer, side by side), at 768 trainable
    numbers each: SLTrain (r = 4, δ = 1/8) against the same support budget spent on S alone (r = 0, δ = 3/8). The
    low-rank part puts most of its energy in the true update's top-4 singular subspace, S almost none."""
    task = wb.tasks.get("synthetic:lowrank+sparse", dim=32, n_train=1024, n_val=256, layout="parallel")
    kw = {"steps": 300, "lr": 1e-2, "probes": (), "progress": False, "presets": False, "seed": 0}
    run = wb.train(task, "sltrain", r=4, delta=128 / 1024, **kw)
    sparse_only = wb.train(task, "sltrain", r=0, delta=384 / 1024, **kw)
    assert run.adaptation.num_trainable() == sparse_only.adaptation.num_trainable() == 768
    ours, theirs = task.evaluate(run.adaptation.model)["rel_error"], task.evaluate(sparse_only.adaptation.model)[
        "rel_error"]
    assert ours < 0.7 * theirs, (ours, theirs)
    truth = task.reference_delta()
    for n, layer in run.adaptation.named_layers():
        u, _, vh = torch.linalg.svd(truth[n])
        with torch.no_grad():
            low, sparse = layer.low_rank(), layer.sparse()

        def head_share(m, u=u, vh=vh):
            return float((u[:, :4].t() @ m @ vh[:4].t()).pow(2).sum() / m.pow(2).sum())

        assert head_share(low) > 0.7 and head_share(sparse) < 0.1, (n, head_share(low), head_share(sparse))
        assert 0.05 < float(layer.inspect()["sparse_energy"]) < 0.5


def test_prepare_with_fisher_alone_reweights_the_decomposition_at_the_uniform_config():
    task = TinyTask()
    ad = wb.adapt(task.model(), "lq-lora", task.targets, seed=0, r=2, bits=2, block0=16, block1=16, fisher_batches=2)
    before = {n: (l.init_A.clone(), l.nf_config) for n, l in ad.named_layers()}
    ad.variant.prepare(StepContext.standalone(ad, total_steps=5, task=task), task.batches(seed=0))
    for n, layer in ad.named_layers():
        assert layer.nf_config == before[n][1] == NFConfig(2, 8, 16, 16)
        assert not torch.allclose(layer.init_A, before[n][0])  # re-decomposed under the Fisher weights
        torch.testing.assert_close(layer.base.weight, nf_quantize(layer.W0 - layer.low_rank_start(), layer.nf_config))
