"""Rank-allocation variants: allocation follows the true ranks, SoRA's pruning is exact, AdaLoRA matches PEFT."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from scipy.stats import spearmanr

import workbench as wb
from workbench.events import StepContext
from workbench.variants.rank.sora import compact

X = torch.randn(9, 32, generator=torch.Generator().manual_seed(4))

ALLOCATION_SETTINGS = {  # fixed seed 0, synthetic:mixed (true ranks 8, 1, 16, 0, 4, 2), a few seconds each
    "sora": dict(steps=800, lr=1e-2, r=16, lam=0.5),
    "adalora": dict(steps=800, lr=3e-2, r=16, target_r=6, tinit=200, tfinal=100, delta_t=10),
    "bayesian-lora": dict(steps=800, lr=3e-2, r=16, prior=0.03),
    "increlora": dict(steps=600, lr=1e-2, target_rank=6, warmup=100, interval=60, top_h=2),
}
# IncreLoRA grows from rank 1 and, on the chained layers, rewards the layers that compensate for their neighbours
# (test_increlora_rank_one_start_learns_the_compensating_layer_first); it is held to the truth on parallel layers
CASES = [(v, layout) for v in sorted(ALLOCATION_SETTINGS) for layout in ("chain", "parallel")
         if (v, layout) != ("increlora", "chain")]


@pytest.mark.parametrize("variant,layout", CASES)
def test_allocated_rank_follows_true_rank(variant, layout):
    task = wb.tasks.get("synthetic:mixed", layout=layout)
    truth = task.true_ranks()
    run = wb.train(task, variant, probes=["ranks"], every=100, progress=False, **ALLOCATION_SETTINGS[variant])
    allocated = {n: float(layer.inspect()["rank"]) for n, layer in run.adaptation.named_layers()}
    rho = spearmanr([truth[n] for n in truth], [allocated[n] for n in truth]).correlation
    assert rho > 0.5, f"{variant} ({layout}): allocated {allocated} vs true {truth} (Spearman {rho:.2f})"
    heat = run.metrics[(run.metrics.probe == "ranks") & (run.metrics.key == "rank")]
    assert heat.module.nunique() == 6  # the allocation heatmap has every module


def test_increlora_grows_to_its_budget_in_steps():
    task = wb.tasks.get("synthetic:mixed")
    run = wb.train(task, "increlora", steps=400, lr=1e-2, probes=["ranks"], every=20, progress=False,
                   target_rank=6, warmup=100, interval=60, top_h=2)
    ranks = run.metrics[(run.metrics.key == "rank") & (run.metrics.module != "")]
    for _, series in ranks.groupby("module"):
        assert series.value.is_monotonic_increasing  # ranks only grow
    final = {m: int(v) for m, v in ranks.groupby("module").value.last().items()}
    assert sum(final.values()) == 6 * 6 and min(final.values()) == 1 and max(final.values()) > 6
    assert all(float(layer.reserve_gate) == 0 for _, layer in run.adaptation.named_layers())  # budget spent


def test_increlora_importance_is_the_code_score_on_the_pre_step_update():
    # S = Σ|ΔW ⊙ ∂L/∂ΔW| / √(d_out·d_in), with ΔW as the forward saw it (the code scores in a backward hook)
    ad = wb.adapt(tiny_model(), "increlora", ["0", "2"], target_rank=4)
    layer = ad.layer("2")
    with torch.no_grad():
        for e in layer.e_blocks:
            e.normal_()
    ad.variant.prepare(StepContext.standalone(ad, total_steps=10), None)
    delta = layer.delta_weight().detach()
    ad.model(X).pow(2).sum().backward()
    ad.model(X).pow(2).sum().backward()  # a second pass (a gradient probe on the same batch) is not counted twice
    x_in = torch.tanh(ad.model[0](X)).detach()
    w = (layer.base.weight + delta).detach().requires_grad_(True)
    (torch.nn.functional.linear(x_in, w, layer.base.bias) ** 2).sum().backward()
    with torch.no_grad():
        layer.e_blocks[0].add_(1.0)  # an optimizer step in between must not change the score
    expected = float((delta * w.grad).abs().sum()) / (32 * 64) ** 0.5
    assert layer.importance() == pytest.approx(expected, rel=1e-5)
    assert layer.importance() is None  # consumed once per step


def test_increlora_new_ranks_get_their_own_group_with_fresh_moments_and_a_warmup():
    # the code's add_param_group under multi_lr: fresh Adam moments, lr warming up from 0 over rank_warmup steps
    ad = wb.adapt(tiny_model(), "increlora", ["0", "2"], target_rank=4, warmup=0, interval=1, top_h=1,
                  rank_warmup=4)
    opt = torch.optim.AdamW(ad.variant.param_groups(ad, 0.1, 0.0))
    for step in range(5):
        opt.zero_grad()
        ad.model(X).pow(2).mean().backward()
        opt.step()
        ad.variant.on_step(StepContext(ad, step, total_steps=5, lr=0.1, optimizer=opt))
    groups = [g for g in opt.param_groups if g.get("name") == "increlora-new-ranks"]
    assert [g["added"] for g in groups] == [1, 2, 3]  # steps > warmup 0; budget 8 = 2 × 1 + 3 growths of k = 2
    assert [g["lr"] for g in groups] == pytest.approx([0.1 * 3 / 4, 0.1 * 2 / 4, 0.1 * 1 / 4])
    assert sum(layer.rank for _, layer in ad.named_layers()) == 8
    assert all(float(layer.reserve_gate) == 0 for _, layer in ad.named_layers())  # budget spent, reserves closed
    first_grown = groups[0]["params"][0]  # the e activated at step 1
    assert int(opt.state[first_grown]["step"]) == 3  # its own count, not the main group's 5
    assert int(opt.state[opt.param_groups[0]["params"][0]]["step"]) == 5


def test_increlora_grown_adapter_saves_and_loads(tmp_path):
    task = wb.tasks.get("synthetic:mixed")
    run = wb.train(task, "increlora", steps=60, lr=1e-2, probes=(), progress=False, target_rank=4, warmup=10,
                   interval=10, top_h=2)
    ad = run.adaptation
    assert max(layer.rank for _, layer in ad.named_layers()) > 1
    x = torch.randn(8, 64)
    with torch.no_grad():
        expected = ad.model(x)
    ad.save(tmp_path / "a")
    ad2 = wb.load_adaptation(task.model(), tmp_path / "a")
    assert {n: l.rank for n, l in ad2.named_layers()} == {n: l.rank for n, l in ad.named_layers()}
    with torch.no_grad():
        torch.testing.assert_close(ad2.model(x), expected, atol=1e-6, rtol=1e-6)
    assert ad2.num_trainable() == ad.num_trainable()


def test_increlora_rank_one_start_learns_the_compensating_layer_first():
    # why IncreLoRA's allocation misses the true ranks on synthetic:mixed (docstring, notebook 02): before the first
    # growth the layer with no true update has a far larger ΔW than the rank-8 and rank-16 layers
    task = wb.tasks.get("synthetic:mixed")
    run = wb.train(task, "increlora", steps=81, lr=1e-2, probes=(), progress=False, target_rank=6, warmup=100,
                   interval=60, top_h=2, presets=False)  # the paper's γ = 0.1, as the docstring's numbers
    norm = {n: float(torch.linalg.matrix_norm(layer.delta_weight().detach()))
            for n, layer in run.adaptation.named_layers()}
    truth = task.true_ranks()
    assert truth["layers.3"] == 0 and truth["layers.0"] == 8 and truth["layers.2"] == 16
    assert norm["layers.3"] > 5 * max(norm["layers.0"], norm["layers.2"]), norm


def test_sora_gates_reach_exact_zeros_and_pruning_is_exact():
    task = wb.tasks.get("synthetic:mixed")
    run = wb.train(task, "sora", steps=400, lr=1e-2, probes=(), progress=False, r=16, lam=0.5)
    ad = run.adaptation
    gates = torch.cat([layer.gate.detach() for _, layer in ad.named_layers()])
    assert (gates == 0).sum() > 10  # the proximal step sets gates exactly to zero
    x = torch.randn(16, 64)
    with torch.no_grad():
        before = ad.model(x)
    n_before = ad.num_trainable()
    compact(ad)
    with torch.no_grad():
        torch.testing.assert_close(ad.model(x), before, atol=1e-5, rtol=1e-5)
    kept = int((gates != 0).sum())
    assert ad.num_trainable() == kept * (64 + 64) < n_before


def test_sora_proximal_step_is_a_soft_threshold():
    ad = wb.adapt(tiny_model(), "sora", ["0"], r=4, lam=2.0)
    layer = ad.layer("0")
    with torch.no_grad():
        layer.gate.copy_(torch.tensor([0.5, -0.5, 0.01, -0.02]))
    opt = torch.optim.SGD([{"params": [layer.gate], "lr": 0.01, "name": "gates"}])
    ad.variant.on_step(StepContext(ad, 0, total_steps=100, lr=0.01, optimizer=opt))
    torch.testing.assert_close(layer.gate.detach(), torch.tensor([0.48, -0.48, 0.0, 0.0]))


@pytest.fixture
def peft():
    """PEFT, for the tests that compare with it: only they are skipped where it is not installed."""
    return pytest.importorskip("peft")


def _peft_adalora(peft, total_step, **kw):
    cfg = peft.AdaLoraConfig(target_modules=["0", "2"], init_r=6, target_r=3, lora_alpha=32, tinit=2, tfinal=2,
                             deltaT=1, total_step=total_step, beta1=0.85, beta2=0.85, orth_reg_weight=0.5, **kw)
    return peft.get_peft_model(tiny_model(), cfg)


def test_adalora_matches_peft_forward_regularizer_budget_and_masks(peft):
    total = 10
    pm = _peft_adalora(peft, total)
    ad = wb.adapt(tiny_model(), "adalora", ["0", "2"], r=6, target_r=3, alpha=32.0, tinit=2, tfinal=2, delta_t=1)
    with torch.no_grad():  # same tensors in both
        for name, layer in ad.named_layers():
            t = pm.base_model.model.get_submodule(name)
            layer.lora_A.copy_(t.lora_A["default"])
            layer.lora_B.copy_(t.lora_B["default"])
            layer.gate.copy_(torch.randn(6))
            t.lora_E["default"].copy_(layer.gate[:, None])
    torch.testing.assert_close(ad.model(X), pm(X), atol=1e-5, rtol=1e-5)
    ours_reg = ad.variant.regularizer(StepContext.standalone(ad, total_steps=1))
    y = torch.randn(9, 32)
    peft_reg = 0.0  # PEFT adds it to a Hugging Face output's loss only; its formula, by hand on PEFT's tensors
    for n, p in pm.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and p.requires_grad:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            peft_reg = peft_reg + torch.norm(cov - torch.eye(*cov.shape), p="fro")
    torch.testing.assert_close(ours_reg, 0.5 * peft_reg / 4)
    allocator = pm.base_model.rankallocator
    opt = torch.optim.SGD(ad.parameters(), lr=0.0)
    for step in range(total):
        for model in (ad.model, pm):
            model.zero_grad()
            torch.nn.functional.mse_loss(model(X), y).backward()
        ad.variant.on_step(StepContext(ad, step, total_steps=total, lr=0.0, optimizer=opt))
        pm.base_model.update_and_allocate(step)
        assert ad.variant.allocator.budget(step) == allocator.budget_schedule(step)
        for name, layer in ad.named_layers():
            theirs = pm.base_model.model.get_submodule(name).lora_E["default"].detach().view(-1)
            assert torch.equal(layer.gate.detach() == 0, theirs == 0), f"masks differ at step {step} in {name}"
    assert sum(int(layer.inspect()["rank"]) for _, layer in ad.named_layers()) == 6  # target_r x modules


@pytest.mark.parametrize("rescale,svd", [("keep", "randomized"), ("alpha", "randomized"), ("keep", "factored")])
def test_squeeze_is_the_best_rank_k_approximation(rescale, svd):
    from workbench.variants.rank.squeeze import squeeze

    ad = wb.adapt(tiny_model(), "lora-squeeze", ["0", "2"], r=8, target_r=3, mode="none", rescale=rescale, alpha=8.0,
                  svd=svd)
    with torch.no_grad():
        for _, layer in ad.named_layers():
            layer.lora_B.normal_()
    dense = {n: layer.delta_weight().detach() for n, layer in ad.named_layers()}
    energy = squeeze(ad, 3)
    for name, layer in ad.named_layers():
        u, s, vh = torch.linalg.svd(dense[name])
        best = (u[:, :3] * s[:3]) @ vh[:3]
        torch.testing.assert_close(layer.delta_weight().detach(), best, atol=1e-4, rtol=1e-4)
        assert layer.lora_A.shape[0] == 3 and 0 < energy[name] < 1
        assert energy[name] == pytest.approx(float((s[:3] ** 2).sum() / (s ** 2).sum()), rel=1e-4)
        assert layer.scaling == (8.0 / 8 if rescale == "keep" else 8.0 / 3)  # α/r_src kept, or α/r_tgt


@pytest.mark.parametrize("mode,ranks", [("post", [16, 4]), ("in", [16, 8, 4])])
def test_squeeze_schedules_while_training(mode, ranks):
    run = wb.train(wb.tasks.get("synthetic:fullrank"), "lora-squeeze", steps=60, every=5, progress=False,
                   probes=["ranks"], r=16, target_r=4, mode=mode)
    assert run.status == "completed"
    seen = run.metrics[(run.metrics.key == "rank") & (run.metrics.module == "layers.0")].value.tolist()
    assert sorted(set(seen), reverse=True) == ranks and seen[-1] == 4  # a staircase down to the target
    assert run.summary["trainable_params"] == 2 * 4 * (64 + 64)
    assert run.summary["final_loss"] < run.summary["init_loss"]


@pytest.mark.parametrize("seed", [0, 1])
def test_diffora_keeps_the_modules_that_need_an_update(seed):
    task = wb.tasks.get("synthetic:mixed")
    truth = task.true_ranks()
    run = wb.train(task, "diffora", steps=400, lr=1e-2, r=8, keep=2 / 6, progress=False, probes=(), every=50,
                   seed=seed)
    kept = {n for n, layer in run.adaptation.named_layers() if float(layer.decision) == 1.0}
    assert kept == set(sorted(truth, key=truth.get)[-2:])  # the two layers with the largest true rank
    for name, layer in run.adaptation.named_layers():
        if name not in kept:
            assert not layer.lora_A.requires_grad and torch.count_nonzero(layer.delta_weight()) == 0
    assert run.summary["trainable_params"] == 2 * 8 * 128


@pytest.mark.slow
def test_codyra_continual_training_prunes_ranks_and_merges_between_stages():
    from workbench.variants.rank.codyra import train_continual

    stages = wb.tasks.get("digits:continual").stages()
    # κ_max 0.025: the code's three-mask threshold (the default) zeroes |g| < 2κ, the dead zone the soft threshold at
    # 0.05 had (at 0.05 the three masks leave the last stage at 0.21 accuracy in 60 steps)
    df = train_continual(stages, "codyra", steps=60, lr=1e-2, r=8, kappa_max=0.025)
    assert list(df.after_stage) == ["rotate", "invert", "classes"]
    assert (df.active_ranks < 8 * 8).all()  # the threshold removed ranks in every stage (8 modules x r=8 max)
    assert df["accuracy/classes"].iloc[-1] > df["accuracy/classes"].iloc[0] + 0.2  # the last stage was learned


def test_merge_and_unload_keeps_the_update_and_leaves_plain_linears():
    model = tiny_model()
    ad = wb.adapt(model, "codyra", ["0", "2"], r=4)
    with torch.no_grad():
        for _, layer in ad.named_layers():
            layer.lora_B.normal_()
        expected = model(X)
    plain = ad.merge_and_unload()
    assert all(type(m) is torch.nn.Linear for m in (plain[0], plain[2]))
    torch.testing.assert_close(plain(X), expected, atol=1e-5, rtol=1e-5)


# -- the shared family helpers (workbench/variants/rank/common.py) keep each variant's numbers bit for bit ----------


def _randomized(name, **cfg):
    ad = wb.adapt(tiny_model(), name, ["0", "2"], **cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in ad.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return ad


def test_adalora_regularizer_is_its_formula_before_sharing():
    ad = _randomized("adalora", r=6, target_r=3, orth_reg_weight=0.7)
    total, n = 0.0, 0  # the code AdaLoRA had before the shared helper: a running sum over P and Q, then γ·sum/n
    for _, layer in ad.named_layers():
        for cov in (layer.lora_A @ layer.lora_A.t(), layer.lora_B.t() @ layer.lora_B):
            total = total + torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0]))
            n += 1
    assert torch.equal(ad.variant.regularizer(StepContext.standalone(ad, total_steps=1)), 0.7 * total / n)




def test_orthogonality_normalisations_differ_by_the_number_of_matrices_per_module():
    from workbench.variants.rank.common import orthogonality_regularizer

    ad = _randomized("adalora", r=6, target_r=3)
    layers = [layer for _, layer in ad.named_layers()]
    per_matrix = orthogonality_regularizer(layers, 1.0, per="matrix")
    torch.testing.assert_close(orthogonality_regularizer(layers, 1.0, per="module"), 2 * per_matrix)
    assert per_matrix > 0
    with pytest.raises(ValueError, match="per must be"):
        orthogonality_regularizer(layers, 1.0, per="tensor")


def test_adalora_importance_averages_are_its_formulas_before_sharing():
    ad = _randomized("adalora", r=6, target_r=3, beta1=0.8, beta2=0.6)
    ctx = StepContext.standalone(ad, total_steps=100)
    ipt, unc = {}, {}
    for step in range(3):
        ad.model.zero_grad()
        ad.model(X).pow(2).mean().backward()
        with torch.no_grad():  # the allocator's update before the shared helper, on every P, Q and λ entry
            for _, layer in ad.named_layers():
                for p in (layer.lora_A, layer.lora_B, layer.gate):
                    i = (p * p.grad).abs()
                    key = id(p)
                    if key not in ipt:
                        ipt[key], unc[key] = torch.zeros_like(p), torch.zeros_like(p)
                    ipt[key] = 0.8 * ipt[key] + (1 - 0.8) * i
                    unc[key] = 0.6 * unc[key] + (1 - 0.6) * (i - ipt[key]).abs()
        ctx.step = step
        ad.variant.on_step(ctx)  # updates the averages, then masks λ (so read p before it)
    allocator = ad.variant.allocator
    for _, layer in ad.named_layers():
        for p in (layer.lora_A, layer.lora_B, layer.gate):
            assert torch.equal(allocator.score(p), ipt[id(p)] * unc[id(p)])
    assert torch.equal(allocator.score(torch.nn.Parameter(torch.ones(3))), torch.zeros(3))  # never updated: 0


def test_increlora_importance_averages_are_its_formulas_before_sharing():
    from workbench.variants.rank.common import ImportanceEMA

    ema, ipt, unc = ImportanceEMA(0.85, 0.7), {}, {}
    for s in (0.3, 1.7, 0.02, 0.9):
        ema.update("m", s)
        i = ipt.get("m", 0.0)  # IncreLoRA's on_step before the shared helper
        i = 0.85 * i + (1 - 0.85) * s
        unc["m"] = 0.7 * unc.get("m", 0.0) + (1 - 0.7) * abs(s - i)
        ipt["m"] = i
        assert (ema.ipt["m"], ema.unc["m"]) == (ipt["m"], unc["m"])  # exactly, not approximately
    assert ema.score("m") == ipt["m"] * unc["m"] and ema.score("never") == 0.0
