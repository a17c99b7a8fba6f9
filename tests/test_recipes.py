"""Optimizer recipes (issue 18): plumbing (options validated and recorded, wb.recipes(), refusals), LoRA-Pro's
least-squares gradients and Sylvester X, AltLoRA's closed-form steps, ALLoRA's row factor, GGPO/MGPO, and the
alignment of each recipe's step with the full-weight gradient on synthetic:lowrank."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.linalg
import torch

import workbench as wb
from workbench.errors import ConfigError
from workbench.recipes import factor_pairs
from workbench.recipes.allora import delta_row_norms, row_factors
from workbench.recipes.lora_pro import adjusted_gradients

FACTOR_RECIPES = ["allora", "lora-pro", "altlora", "altlora+", "lora-ggpo", "lora-mgpo"]


def _task(**kw):
    return wb.tasks.get("synthetic:lowrank", dim=16, depth=2, rank=2, n_train=128, n_val=64, **kw)


# -- plumbing --------------------------------------------------------------------------------------------------


def test_recipes_lists_every_recipe_with_paper_and_config_fields():
    infos = {i.name: i for i in wb.recipes()}
    assert set(FACTOR_RECIPES) | {"adamw"} <= set(infos)
    for name in FACTOR_RECIPES:
        info = infos[name]
        assert info.paper and "arXiv" in info.paper and info.summary and info.needs_factors
        assert info.fields(), f"{name} declares no options"
        assert all(f["help"] for f in info.fields())


def test_recipe_options_are_validated_and_recorded():
    run = wb.train(_task(), "lora", steps=3, r=2, recipe="altlora", recipe_options={"mode": "alternate", "period": 2},
                   probes=(), progress=False)
    assert run.config["recipe"] == "altlora"
    assert run.config["recipe_options"] == {"mode": "alternate", "period": 2, "beta1": 0.9, "reg": 1e-5,
                                            "paper_scaling": False}
    with pytest.raises(ConfigError, match=r"altlora: period=0 is invalid; period must be an integer in \[1"):
        wb.train(_task(), "lora", steps=3, recipe="altlora", recipe_options={"period": 0}, progress=False)
    with pytest.raises(ConfigError, match="unknown config key 'rh'; did you mean 'rho'"):
        wb.train(_task(), "lora", steps=3, recipe="lora-mgpo", recipe_options={"rh": 0.1}, progress=False)
    with pytest.raises(ConfigError, match="adamw: unknown config key"):
        wb.train(_task(), "lora", steps=3, recipe_options={"rho": 0.1}, progress=False)


@pytest.mark.parametrize("recipe", FACTOR_RECIPES)
def test_factor_recipes_refuse_layers_without_factors(recipe):
    with pytest.raises(ConfigError, match=rf"{re.escape(recipe)}: full has no low-rank factors .*factors\(\) is None"):
        wb.train(_task(), "full", steps=2, recipe=recipe, progress=False)


def test_factor_pairs_find_the_scaled_parameters_and_refuse_gated_factors():
    ad = wb.adapt(_task().model(), "lora", targets=["layers.*"], r=2, alpha=6.0)
    pairs = factor_pairs(ad, "lora-pro")
    layer = ad.layer(pairs[0].name)
    assert pairs[0].B is layer.lora_B and pairs[0].A is layer.lora_A and pairs[0].scale == pytest.approx(3.0)
    sora = wb.adapt(_task().model(), "sora", targets=["layers.*"], r=2)  # B·gate·s: the gate is trainable
    with pytest.raises(ConfigError, match="not a constant multiple of one trainable tensor"):
        factor_pairs(sora, "altlora")


def test_compare_takes_variant_recipe_pairs():
    cmp = wb.compare(_task(), ["lora", "lora+altlora", "lora+altlora+"], lr=1e-2, steps=4, probes=(),
                     configs={"lora": {"r": 2}}, recipe_options={"altlora": {"mode": "alternate"}})
    assert list(cmp.table.variant) == ["lora", "lora+altlora", "lora+altlora+"]
    assert list(cmp.table.recipe) == ["adamw", "altlora", "altlora+"]
    assert cmp.runs[1].config["recipe_options"]["mode"] == "alternate"
    assert cmp.runs[2].config["recipe_options"]["mode"] == "a-then-b"
    assert set(cmp.summary().variant) == {"lora", "lora+altlora", "lora+altlora+"}
    with pytest.raises(ConfigError, match="unknown recipe 'altlroa'"):
        wb.compare(_task(), ["lora+altlroa"], steps=2)


def test_cli_recipe_flags(tmp_path, capsys):
    from workbench.cli import main

    assert main(["recipes"]) == 0
    assert "lora-pro: Wang et al." in capsys.readouterr().out
    assert main(["run", "synthetic:lowrank", "lora", "--steps", "2", "--recipe", "altlora", "--recipe-option",
                 "mode=alternate", "period=3", "--runs", str(tmp_path)]) == 0
    stored = wb.RunStore(tmp_path).list()
    run = wb.RunStore(tmp_path).load(stored.id.iloc[0] if "id" in stored else stored.iloc[0, 0])
    assert run.config["recipe_options"]["period"] == 3
    assert main(["run", "synthetic:lowrank", "lora", "--steps", "2", "--recipe", "altlora", "--recipe-option",
                 "period=x", "--runs", str(tmp_path)]) == 2
    assert "altlora: period='x' is invalid" in capsys.readouterr().err


# -- LoRA-Pro --------------------------------------------------------------------------------------------------


def _random_layer(out=7, inn=5, r=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((out, r), (r, inn), (out, inn)))


def test_lora_pro_gradients_are_the_least_squares_fit_of_the_full_gradient():
    B, A, G = _random_layer()
    s = 2.0
    gA, gB = s * B.T @ G, s * G @ A.T
    g_a, g_b, x = adjusted_gradients(B, A, gA, gB, s, delta=0.0)
    ours = s * (B @ g_a + g_b @ A)
    # dense least squares over all (g^A, g^B): vec(s(B gA + gB A)) = s[(I ⊗ B) vec gA + (Aᵀ ⊗ I) vec gB]
    out, inn, r = B.shape[0], A.shape[1], A.shape[0]
    M = s * np.hstack([np.kron(np.eye(inn), B.numpy()), np.kron(A.numpy().T, np.eye(out))])
    sol, *_ = np.linalg.lstsq(M, G.numpy().reshape(-1, order="F"), rcond=None)
    best = (M @ sol).reshape(out, inn, order="F")
    np.testing.assert_allclose(ours.numpy(), best, atol=1e-9)
    assert np.linalg.norm(ours.numpy() - G.numpy()) <= np.linalg.norm(best - G.numpy()) + 1e-9
    # X solves BᵀB X + X AAᵀ = −(1/s²)(BᵀB)⁻¹ ∇A Aᵀ, and equals scipy's solution
    rhs = -(torch.linalg.inv(B.T @ B) @ gA @ A.T) / s ** 2
    assert float((B.T @ B @ x + x @ A @ A.T - rhs).abs().max()) < 1e-6
    np.testing.assert_allclose(x.numpy(), scipy.linalg.solve_sylvester((B.T @ B).numpy(), (A @ A.T).numpy(),
                                                                        rhs.numpy()), atol=1e-8)
    # and the Sylvester X is the choice that keeps (g^A, g^B) closest to LoRA's own gradients (Theorem 2.2)
    def gap(xx):
        a = (torch.linalg.inv(B.T @ B) @ gA) / s ** 2 + xx @ A
        b = g_b + B @ x - B @ xx
        return float((a - gA).pow(2).sum() + (b - gB).pow(2).sum())
    g = torch.Generator().manual_seed(1)
    assert all(gap(x) <= gap(x + 1e-3 * torch.randn(r, r, generator=g, dtype=torch.float64)) for _ in range(5))


def test_lora_pro_keeps_full_size_moments():
    task = _task()
    run = wb.train(task, "lora", steps=3, r=2, recipe="lora-pro", probes=(), every=1, progress=False)
    floats = run.metrics.query("key == 'lora_pro/state_floats'").value.iloc[-1]
    assert floats == 2 * 2 * 16 * 16  # two d_out × d_in moments for each of the two 16×16 layers


# -- AltLoRA ---------------------------------------------------------------------------------------------------


def _one_layer_adaptation(seed=0):
    model = torch.nn.Sequential(torch.nn.Linear(5, 4))
    for p in model.parameters():
        p.requires_grad_(False)
    ad = wb.adapt(model, "lora", targets=["0"], r=2, alpha=2.0, seed=seed)
    layer = ad.layer("0")
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        layer.lora_B.copy_(torch.randn(4, 2, generator=g))
    return ad, layer


def test_altlora_a_step_then_b_step_equal_algorithm_1():
    from workbench.recipes.altlora import AltLoRA

    ad, layer = _one_layer_adaptation()
    recipe = AltLoRA(ad, 0.1, mode="alternate")
    lam, beta1, lr = 1e-5, 0.9, 0.1
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(4))
    target = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))

    def closure():
        recipe.optimizer.zero_grad()
        loss = (ad.model(x) - target).pow(2).mean()
        loss.backward()
        return loss

    A0, B0 = layer.lora_A.detach().clone().double(), layer.lora_B.detach().clone().double()
    recipe.step(closure)  # step 0: A only
    gA = layer.lora_A.grad.double()
    I = torch.eye(2, dtype=torch.float64)
    mA = (1 - beta1) * torch.linalg.inv(B0.T @ B0 + lam * I) @ gA  # M_A starts at 0: the re-projection adds nothing
    A1 = A0 - lr * mA / (1 - beta1)
    torch.testing.assert_close(layer.lora_A.detach().double(), A1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.lora_B.detach().double(), B0)
    recipe.step(closure)  # step 1: B only, with the new A
    gB = layer.lora_B.grad.double()
    mB = (1 - beta1) * gB @ torch.linalg.inv(A1 @ A1.T + lam * I)
    torch.testing.assert_close(layer.lora_B.detach().double(), B0 - lr * mB / (1 - beta1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.lora_A.detach().double(), A1, atol=1e-6, rtol=1e-5)
    recipe.step(closure)  # step 2: A again; its momentum is re-projected by (BᵀB + λI)⁻¹ Bᵀ B_prev
    B1 = B0 - lr * mB / (1 - beta1)
    gA2 = layer.lora_A.grad.double()
    P = torch.linalg.inv(B1.T @ B1 + lam * I)
    mA2 = beta1 * P @ B1.T @ B0 @ mA + (1 - beta1) * P @ gA2
    torch.testing.assert_close(layer.lora_A.detach().double(), A1 - lr * mA2 / (1 - beta1 ** 2), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("recipe", ["altlora", "altlora+", "lora-pro"])
def test_projection_recipes_stay_finite_from_b_zero(recipe):
    run = wb.train(_task(), "lora", steps=20, r=2, recipe=recipe, probes=(), progress=False)
    assert run.status == "completed"
    layer = next(iter(run.adaptation.layers.values()))
    assert torch.isfinite(layer.lora_A).all() and torch.isfinite(layer.lora_B).all()
    assert float(layer.lora_B.detach().abs().max()) > 0


# -- ALLoRA ----------------------------------------------------------------------------------------------------


def test_allora_factor_is_eta_at_zero_and_decreases_with_the_row_norm():
    for eta2 in (1.0, 2.0, 4.0):
        assert float(row_factors(torch.zeros(3), eta2)[0]) == pytest.approx(eta2 ** 0.5)
    norms = torch.linspace(0, 10, 50)
    c = row_factors(norms, 4.0)
    assert bool((c[1:] < c[:-1]).all())
    B, A, _ = _random_layer()
    torch.testing.assert_close(delta_row_norms(B, A, 1.5), (1.5 * B @ A).norm(dim=1))


def test_allora_scales_only_the_factor_gradients():
    ad, layer = _one_layer_adaptation()
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    loss_of = lambda: (ad.model(x) ** 2).sum()  # noqa: E731
    loss_of().backward()
    gA, gB, gx = layer.lora_A.grad.clone(), layer.lora_B.grad.clone(), x.grad.clone()
    from workbench.recipes.allora import ALLoRA

    recipe = ALLoRA(ad, 0.1, eta_squared=2.0)
    layer.lora_A.grad = layer.lora_B.grad = x.grad = None
    loss_of().backward()
    c = recipe.factors["0"]
    s = layer.scaling
    G = (2 * ad.model(x)).detach().T @ x.detach()  # ∂L/∂W of the layer
    torch.testing.assert_close(layer.lora_B.grad, c[:, None] * gB)
    torch.testing.assert_close(layer.lora_A.grad, s * layer.lora_B.detach().T @ (c[:, None] * G), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(x.grad, gx)  # the input's gradient is LoRA's own
    assert not torch.allclose(layer.lora_A.grad, gA)
    recipe.close()
    assert "delta_forward" not in layer.__dict__


def test_allora_records_row_factors_for_a_heatmap():
    run = wb.train(_task(), "lora", steps=30, r=2, alpha=2.0, recipe="allora", every=10, probes=(), progress=False)
    steps = run.snapshot_steps("recipe", "row_factor", "layers.0")
    assert len(steps) >= 3
    first, last = run.snapshot("recipe", "row_factor", "layers.0", steps[0]), run.snapshot("recipe", "row_factor",
                                                                                           "layers.0")
    assert first.shape == (16,) and float(last.mean()) < float(first.mean()) <= 2.0 + 1e-6


def test_allora_refuses_dropout():
    with pytest.raises(ConfigError, match="allora: dropout=0.1 is invalid"):
        wb.train(_task(), "lora", steps=2, r=2, dropout=0.1, recipe="allora", progress=False)


# -- GGPO / MGPO -----------------------------------------------------------------------------------------------


def test_ggpo_perturbs_training_forwards_only_and_detaches_afterwards():
    run = wb.train(_task(), "lora", steps=5, r=2, recipe="lora-ggpo", every=1, probes=(), progress=False)
    sig = run.metrics.query("key == 'ggpo/sigma_mean'")
    assert len(sig) and (sig.value > 0).all()
    layer = next(iter(run.adaptation.layers.values()))
    assert not layer._forward_hooks  # close() removed the noise hooks
    from workbench.recipes.ggpo import LoRAGGPO

    ad = run.adaptation
    recipe = LoRAGGPO(ad, 1e-3)
    recipe.row_scale = {n: torch.ones(16) for n in ad.module_names}
    x = torch.randn(4, 16)
    ad.eval()
    with torch.no_grad():
        a, b = ad.model(x), ad.model(x)
    torch.testing.assert_close(a, b)  # no noise at evaluation
    ad.train()
    with torch.no_grad():
        assert not torch.allclose(ad.model(x), a)
    recipe.close()


def test_mgpo_takes_the_gradient_at_the_perturbed_point_and_steps_from_the_unperturbed_one():
    from workbench.recipes.ggpo import LoRAMGPO

    ad, layer = _one_layer_adaptation()
    recipe = LoRAMGPO(ad, 0.05, rho=0.5)
    x, target = torch.randn(8, 5), torch.randn(8, 4)
    seen = []

    def closure():
        recipe.optimizer.zero_grad()
        seen.append((layer.lora_A.detach().clone(), layer.lora_B.detach().clone()))
        loss = (ad.model(x) - target).pow(2).mean()
        loss.backward()
        return loss

    start = (layer.lora_A.detach().clone(), layer.lora_B.detach().clone())
    recipe.step(closure)  # m = 0: no perturbation
    torch.testing.assert_close(seen[0][0], start[0])
    torch.testing.assert_close(seen[0][1], start[1])
    before = (layer.lora_A.detach().clone(), layer.lora_B.detach().clone())
    m = [recipe.optimizer.state[p]["exp_avg"].clone() for p in (layer.lora_B, layer.lora_A)]
    gbar = float(recipe.gbar)
    recipe.step(closure)
    eps_b, eps_a = (0.5 * mm / gbar for mm in m)
    torch.testing.assert_close(seen[1][1], before[1] + eps_b)
    torch.testing.assert_close(seen[1][0], before[0] + eps_a)
    assert recipe.eps_norm == pytest.approx(float(torch.sqrt(eps_a.pow(2).sum() + eps_b.pow(2).sum())), rel=1e-5)


# -- alignment with the full-weight gradient -------------------------------------------------------------------


def _mean_cosine(recipe, variant="lora", lr=1e-2, **kw):
    run = wb.train(wb.tasks.get("synthetic:lowrank"), variant, steps=60, r=4, lr=lr, seed=0, every=5,
                   probes=["gradients"], progress=False, **({"recipe": recipe} if recipe else {}), **kw)
    m = run.metrics
    return float(m[m.key == "step_grad_cosine"].value.mean())


def test_lora_pro_and_altlora_steps_follow_the_full_gradient_better_than_adamw():
    adamw = _mean_cosine("adamw")
    assert _mean_cosine("lora-pro") > adamw
    assert _mean_cosine("altlora") > adamw


def test_altlora_alternation_reads_the_loops_step():
    """In train() the phase comes from the loop's ctx.step: step 0 is an A phase (with B = 0 nothing moves), step 1
    a B phase; the one-backward mode moves B at step 0 already."""
    def b_after(steps, mode):
        run = wb.train(_task(), "lora", steps=steps, r=2, recipe="altlora", recipe_options={"mode": mode},
                       probes=(), progress=False)
        return float(next(iter(run.adaptation.layers.values())).lora_B.detach().abs().max())

    assert b_after(1, "alternate") == 0.0
    assert b_after(2, "alternate") > 0.0
    assert b_after(1, "a-then-b") > 0.0
