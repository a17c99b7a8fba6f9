"""Evidence for the tiny-parameter and structural variants (issue 6, second half): SVFit, LoLDU, Comp-LoRA, S2-LoRA,
Block-LoRA and TLoRA. Each count is the paper's formula written out; each property is checked against an independent
reference built here from torch.linalg, not from the layer's own code."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

import workbench as wb
from workbench.events import StepContext
from workbench.variants.tiny.tlora import factorize

X = torch.randn(6, 32, generator=torch.Generator().manual_seed(7))
SHAPES = {"0": (64, 32), "2": (32, 64)}  # tiny_model's targets, (out, in)
QUICK = dict(probes=(), progress=False)


def _perturb(ad, seed=0):
    """Move every trainable tensor off its init, so the checks below see a non-zero update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ad.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.1))


def _fit(ad, teacher, steps=300, lr=0.05):
    """Regress the adapted model onto a teacher with Adam; returns the final MSE relative to the teacher's output."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(256, 32, generator=g)
    with torch.no_grad():
        y = teacher(x)
    opt = torch.optim.Adam([p for p in ad.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ad.model(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(ad.model(x), y) / y.pow(2).mean())


def _single(seed=0):
    """One frozen 64x32 layer (tiny_model's first), as a model of its own."""
    return torch.nn.Sequential(tiny_model(seed)[0])


# ------------------------------------------------------------------------- trainable counts = the papers' formulas


def test_svfit_count_is_r_per_layer():
    ad = wb.adapt(tiny_model(), "svfit", ["0", "2"], r=6)
    assert ad.num_trainable() == sum(6 for _ in SHAPES)  # r singular values per layer (§3)


def test_svfit_energy_rule_picks_the_fewest_values_holding_the_share():
    ad = wb.adapt(tiny_model(), "svfit", ["0", "2"], energy=0.99)
    expected = 0
    for name in SHAPES:
        s2 = torch.linalg.svdvals(tiny_model().get_submodule(name).weight) ** 2
        r = next(k for k in range(1, len(s2) + 1) if s2[:k].sum() >= 0.99 * s2.sum())  # smallest r with ≥ 99%
        assert ad.layer(name).sigma.numel() == r < len(s2)
        expected += r
    assert ad.num_trainable() == expected


def test_loldu_count_is_r_per_layer():
    ad = wb.adapt(tiny_model(), "loldu", ["0", "2"], r=6)
    assert ad.num_trainable() == sum(6 for _ in SHAPES)  # r diagonal entries z per layer; P, L, U frozen


def test_comp_lora_count_is_loras():
    ad = wb.adapt(tiny_model(), "comp-lora", ["0", "2"], r=3, k=4)
    assert ad.num_trainable() == sum(3 * (o + i) for o, i in SHAPES.values())  # r(d_in + d_out), U_k a buffer


def test_s2_lora_count_is_one_pair_per_shape_plus_r_per_layer():
    ad = wb.adapt(tiny_model(), "s2-lora", ["0", "2"], r=3)
    shapes = set(SHAPES.values())  # two distinct shapes -> two shared pairs
    assert ad.num_trainable() == sum(3 * (o + i) for o, i in shapes) + 3 * len(SHAPES)
    six = wb.adapt(wb.tasks.get("synthetic:mixed").model(), "s2-lora", ["layers.*"], r=8)
    assert six.num_trainable() == 8 * (64 + 64) + 6 * 8  # one global pair + r coefficients per weight


def test_block_lora_count_is_arms_plus_shared_heads():
    ad = wb.adapt(tiny_model(), "block-lora", ["0", "2"], r=2, blocks=4)
    widths = {i // 4 for _, i in SHAPES.values()}  # one head Ā (r x d_in/n) per distinct block width
    assert ad.num_trainable() == sum(2 * o for o, _ in SHAPES.values()) + sum(2 * w for w in widths)
    six = wb.adapt(wb.tasks.get("synthetic:mixed").model(), "block-lora", ["layers.*"], r=2, blocks=8)
    assert six.num_trainable() == 6 * 2 * 64 + 2 * 64 // 8  # r·d_out per layer + one shared r·d_in/n head


@pytest.mark.parametrize("cores,r,R", [(3, 2, 2), (2, 3, 1)])
def test_tlora_count_is_trm_plus_tr(cores, r, R):
    ad = wb.adapt(tiny_model(), "tlora", ["0", "2"], cores=cores, r=r, transform_rank=R)
    expected = 0
    for o, i in SHAPES.values():
        J, I = factorize(i, cores), factorize(o, cores)
        assert math.prod(J) == i and math.prod(I) == o
        expected += sum(j * j * R * R for j in J) + r * r * (sum(I) + sum(J))  # Σ J_d² R² + r² (Σ I_d + Σ J_d)
    assert ad.num_trainable() == expected


# ------------------------------------------------------------------------------------------------------- SVFit


def test_svfit_starts_at_the_base_and_only_rescales_the_top_singular_values():
    base = tiny_model()
    ad = wb.adapt(tiny_model(), "svfit", ["0", "2"], r=5)
    torch.testing.assert_close(ad.model(X), base(X), atol=1e-6, rtol=1e-6)  # W' = W_e + W_r = W at init
    _perturb(ad)
    for name, layer in ad.named_layers():
        w = base.get_submodule(name).weight
        u, s, vh = torch.linalg.svd(w)
        sigma = layer.sigma.detach()
        w_e = w - (u[:, :5] * s[:5]) @ vh[:5]
        reference = w_e + (u[:, :5] * sigma) @ vh[:5]  # W' = W_e + U_r diag(σ̃) V_rᵀ
        torch.testing.assert_close(layer.effective_weight().detach(), reference, atol=1e-5, rtol=1e-5)
        # the singular values of W' are σ̃ and W's untouched tail
        expected = torch.cat([sigma.abs(), s[5:]]).sort(descending=True).values
        torch.testing.assert_close(torch.linalg.svdvals(reference), expected, atol=1e-5, rtol=1e-5)


def test_svfit_recovers_a_rescaling_of_the_top_singular_values():
    """The update SVFit is built for — rescale the weight's fundamental subspaces — is learned exactly: the teacher
    multiplies W's top-4 singular values by (1.5, 0.5, 2, 0.8) and the student's σ̃ converges to those values."""
    w = _single()[0].weight
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    factors = torch.tensor([1.5, 0.5, 2.0, 0.8])
    teacher = _single()
    with torch.no_grad():
        teacher[0].weight.copy_(w + (u[:, :4] * (s[:4] * (factors - 1))) @ vh[:4])
    ad = wb.adapt(_single(), "svfit", ["0"], r=4)
    assert _fit(ad, teacher) < 1e-6
    torch.testing.assert_close(ad.layer("0").sigma.detach(), s[:4] * factors, atol=1e-3, rtol=1e-3)


def test_svfit_training_moves_only_sigma_and_lowers_the_loss():
    task = wb.tasks.get("synthetic:lowrank")
    run = wb.train(task, "svfit", steps=60, lr=1e-2, r=8, **QUICK)
    assert run.summary["trainable_params"] == 2 * 8
    assert run.summary["final_loss"] < run.summary["init_loss"]
    for _, layer in run.adaptation.named_layers():
        d = layer.delta_weight().detach()
        core = layer.U.t() @ d @ layer.Vh.t()  # ΔW lives in span(U_r) x span(V_r), diagonal there
        torch.testing.assert_close(core, torch.diag(torch.diagonal(core)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.U @ core @ layer.Vh, d, atol=1e-5, rtol=1e-5)
        assert (layer.sigma - layer.sigma0).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------------- LoLDU


def _minloldu_weight(w, z, r, alpha=1.0):
    """The official minloldu forward: W_res + s·P L_r diag(z) U_r with W_res = W − s·P L_r diag(D_r) U_r."""
    p, lower, upper = torch.linalg.lu(w)
    d = torch.diagonal(upper)
    u_bar = upper / d[:, None]
    s = alpha / r
    w_res = w - s * p @ lower[:, :r] @ torch.diag(d[:r]) @ u_bar[:r]
    return w_res + s * p @ lower[:, :r] @ torch.diag(z) @ u_bar[:r]


def test_loldu_starts_at_the_base_and_matches_the_official_formula():
    base = tiny_model()
    ad = wb.adapt(tiny_model(), "loldu", ["0", "2"], r=6)
    torch.testing.assert_close(ad.model(X), base(X), atol=1e-6, rtol=1e-6)
    for name, layer in ad.named_layers():
        d = torch.diagonal(torch.linalg.lu(base.get_submodule(name).weight)[2])
        torch.testing.assert_close(layer.z.detach(), d[:6])  # z initialised to D_r ("lu" init)
    _perturb(ad)
    for name, layer in ad.named_layers():
        w = base.get_submodule(name).weight
        torch.testing.assert_close(layer.effective_weight().detach(), _minloldu_weight(w, layer.z.detach(), 6),
                                   atol=1e-5, rtol=1e-5)


def test_loldu_recovers_a_teacher_on_its_own_diagonal():
    """A teacher whose weight differs from W only on the first r LDU pivots' diagonal (z* = D_r·(1 + ε)) is
    recovered: z converges to z*."""
    w = _single()[0].weight
    d = torch.diagonal(torch.linalg.lu(w)[2])[:4]
    z_star = d * torch.tensor([1.5, 0.5, 2.0, -1.0])
    teacher = _single()
    with torch.no_grad():
        teacher[0].weight.copy_(_minloldu_weight(w, z_star, 4))
    ad = wb.adapt(_single(), "loldu", ["0"], r=4)
    assert _fit(ad, teacher, steps=400) < 1e-6
    torch.testing.assert_close(ad.layer("0").z.detach(), z_star, atol=1e-3, rtol=1e-3)


def test_loldu_training_moves_only_z_and_lowers_the_loss():
    task = wb.tasks.get("synthetic:lowrank")
    before = task.model()
    run = wb.train(task, "loldu", steps=60, lr=1e-2, r=8, **QUICK)
    assert run.summary["trainable_params"] == 2 * 8
    assert run.summary["final_loss"] < run.summary["init_loss"]
    for name, layer in run.adaptation.named_layers():
        assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["z"]
        torch.testing.assert_close(layer.base.weight, before.get_submodule(name).weight)  # W frozen
        assert (layer.z - layer.D).abs().max() > 1e-4


# --------------------------------------------------------------------------------------------------- Comp-LoRA


def _leak(layer, u_k):
    d = layer.delta_weight().detach()
    return float(torch.linalg.matrix_norm(u_k.t() @ d) / torch.linalg.matrix_norm(d).clamp_min(1e-30))


def test_comp_lora_update_stays_orthogonal_to_the_top_k_subspace_throughout_training():
    """‖U_kᵀ ΔW‖_F / ‖ΔW‖_F at steps 10, 20, ..., 120, with U_k recomputed here from W0; plain LoRA on the same task
    leaks, so the check can fail."""
    task = wb.tasks.get("synthetic:lowrank")
    w0 = {name: task.model().get_submodule(name).weight for name in ("layers.0", "layers.1")}
    u_k = {name: torch.linalg.svd(w)[0][:, :8] for name, w in w0.items()}

    def leaks_of(variant, **cfg):
        seen = {}

        def check(event):
            if event.type == "progress":
                ad = event.run.adaptation
                step = max(int(row[0]) for row in event.rows)  # rows are (step, probe, module, key, value)
                seen[step] = max(_leak(layer, u_k[name]) for name, layer in ad.named_layers())

        run = wb.train(task, variant, steps=120, lr=1e-2, every=10, callback=check, **QUICK, **cfg)
        return run, seen

    comp, comp_leaks = leaks_of("comp-lora", r=4, k=8)
    lora, lora_leaks = leaks_of("lora", r=4)
    assert len(comp_leaks) >= 6
    assert max(comp_leaks.values()) < 1e-5
    assert max(lora_leaks.values()) > 1e-2  # without the projection the update does enter W0's top-8 subspace
    assert comp.summary["final_loss"] < comp.summary["init_loss"]
    for name, layer in comp.adaptation.named_layers():  # W0's top-8 singular values are preserved
        top = torch.linalg.svdvals(u_k[name].t() @ (w0[name] + layer.delta_weight().detach()))
        torch.testing.assert_close(top, torch.linalg.svdvals(w0[name])[:8], atol=1e-5, rtol=1e-5)


def test_comp_lora_starts_at_the_base_and_projects_b_in_the_forward():
    base = tiny_model()
    ad = wb.adapt(tiny_model(), "comp-lora", ["0", "2"], r=3, k=4)
    torch.testing.assert_close(ad.model(X), base(X))
    _perturb(ad)
    for name, layer in ad.named_layers():
        u_k = torch.linalg.svd(base.get_submodule(name).weight)[0][:, :4]
        p_perp = torch.eye(layer.out_features) - u_k @ u_k.t()
        reference = layer.scaling * p_perp @ layer.lora_B @ layer.lora_A  # s·(I − U_k U_kᵀ) B A
        torch.testing.assert_close(layer.delta_weight().detach(), reference.detach(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- S2-LoRA


def test_s2_lora_layers_read_one_shared_pair_and_the_l1_step_makes_exact_zeros():
    task = wb.tasks.get("synthetic:mixed")  # six 64x64 layers
    run = wb.train(task, "s2-lora", steps=200, lr=1e-2, r=8, lam=1.0, **QUICK)
    ad = run.adaptation
    assert len(ad.shared.A) == len(ad.shared.B) == 1
    b, a = ad.shared.B["64x64"], ad.shared.A["64x64"]
    for _, layer in ad.named_layers():  # ΔW_ℓ = s·B diag(λ_ℓ) A with the one shared (A, B)
        reference = layer.scaling * b @ torch.diag(layer.coef) @ a
        torch.testing.assert_close(layer.delta_weight().detach(), reference.detach())
        assert float(layer.inspect()["rank"]) == float((layer.coef != 0).sum())
    coefs = torch.stack([layer.coef.detach() for _, layer in ad.named_layers()])
    assert (coefs == 0).sum() > 0  # proximal step: exact zeros, a learned sparse rank distribution
    assert run.summary["final_loss"] < run.summary["init_loss"]


# ------------------------------------------------------------------------------------------------- Block-LoRA


def test_block_lora_forward_is_the_block_matrix_and_the_head_is_shared():
    ad = wb.adapt(wb.tasks.get("synthetic:mixed").model(), "block-lora", ["layers.*"], r=2, blocks=8)
    _perturb(ad)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    heads = {id(layer.head) for _, layer in ad.named_layers()}
    assert len(heads) == 1  # one head Ā for all six layers
    for _, layer in ad.named_layers():
        block = torch.cat([layer.head] * 8, dim=1)  # A = [Ā Ā … Ā]
        reference = layer.scaling * layer.lora_B @ block
        torch.testing.assert_close(layer.delta_weight().detach(), reference.detach())
        torch.testing.assert_close(layer.delta_forward(x), x @ reference.t(), atol=1e-5, rtol=1e-5)
        assert torch.linalg.matrix_rank(reference.detach()) <= 2


# ------------------------------------------------------------------------------------------------------ TLoRA


def _trm_entry(cores, row, col, sizes):
    """T[row, col] = tr(∏_d A^d[i_d, j_d]) with the multi-indices unravelled big-endian, one entry at a time."""
    ii = torch.unravel_index(torch.tensor(row), sizes)
    jj = torch.unravel_index(torch.tensor(col), sizes)
    m = torch.eye(cores[0].shape[-1])
    for core, i, j in zip(cores, ii, jj):
        m = m @ core[i, j]
    return torch.trace(m)


def _tr_entry(b_cores, c_cores, row, col, out_sizes, in_sizes):
    ii = torch.unravel_index(torch.tensor(row), out_sizes)
    jj = torch.unravel_index(torch.tensor(col), in_sizes)
    m = torch.eye(b_cores[0].shape[-1])
    for core, i in zip(b_cores, ii):
        m = m @ core[i]
    for core, j in zip(c_cores, jj):
        m = m @ core[j]
    return torch.trace(m)


def test_tlora_starts_at_the_identity_and_its_weight_is_w0_t_plus_s_delta():
    base = tiny_model()
    ad = wb.adapt(tiny_model(), "tlora", ["0", "2"], cores=3, r=2, transform_rank=2)
    assert not ad.variant.linear_delta()  # W' = W0·T + s·Δ multiplies W0
    torch.testing.assert_close(ad.model(X), base(X), atol=1e-6, rtol=1e-6)
    for _, layer in ad.named_layers():
        torch.testing.assert_close(layer.transform(), torch.eye(layer.in_features))  # Proposition 1
        assert torch.count_nonzero(layer.residual()) == 0  # B¹ = 0
    _perturb(ad)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, layer in ad.named_layers():
            t, delta = layer.transform(), layer.residual()
            for row, col in torch.randint(0, min(layer.in_features, layer.out_features), (12, 2), generator=g):
                row, col = int(row), int(col)
                torch.testing.assert_close(t[row, col], _trm_entry(list(layer.T_cores), row, col, layer.J))
                torch.testing.assert_close(delta[row, col], _tr_entry(list(layer.B_cores), list(layer.C_cores), row,
                                                                      col, layer.I, layer.J))
            w0 = base.get_submodule(name).weight
            reference = w0 @ t + layer.config.alpha / math.sqrt(layer.config.r) * delta
            torch.testing.assert_close(layer.effective_weight(), reference)
    before = ad.model(X)  # merging folds W0·T + s·Δ in (from a backup); unmerging restores W0 exactly
    ad.merge()
    torch.testing.assert_close(ad.model(X), before, atol=1e-5, rtol=1e-5)
    ad.unmerge()
    for name, layer in ad.named_layers():
        torch.testing.assert_close(layer.base.weight, base.get_submodule(name).weight)


def test_tlora_identity_penalty_is_zero_at_init_and_grows_with_the_transform():
    ad = wb.adapt(tiny_model(), "tlora", ["0", "2"], cores=2, r=2, transform_rank=2, identity_reg=0.1)
    assert ad.variant.regularizer(StepContext.standalone(ad, total_steps=1)).item() == 0.0
    _perturb(ad)
    assert ad.variant.regularizer(StepContext.standalone(ad, total_steps=1)).item() > 0.0
    plain = wb.adapt(tiny_model(), "tlora", ["0", "2"])
    # the official script trains without the penalty
    assert plain.variant.regularizer(StepContext.standalone(plain, total_steps=1)) is None


def test_tlora_learns_a_full_rank_transform_and_lowers_the_loss():
    run = wb.train(wb.tasks.get("synthetic:fullrank"), "tlora", steps=80, lr=1e-2, transform_rank=2, **QUICK)
    t = run.adaptation.layer("layers.0").transform().detach()
    assert torch.linalg.matrix_rank(t - torch.eye(64)) > 8  # the transform moves W0 in many directions at once
    assert run.summary["final_loss"] < run.summary["init_loss"]


@pytest.mark.parametrize("addition_part", ["ttv", "lora"])
def test_tlora_kronecker_transform_matches_the_dense_w0_t(addition_part):
    """Issue 24: with R = 1 the TRM is T = A¹ ⊗ A² ⊗ A³ and the layer applies it to W0 mode by mode; against the
    dense x (W0 T + s Δ)ᵀ + b with T from ``torch.kron``: outputs and the gradients of every core (T's and Δ's)."""
    from conftest import assert_matches_reference

    ad = wb.adapt(tiny_model(), "tlora", ["0", "2"], cores=3, r=2, transform_rank=1, addition_part=addition_part)
    _perturb(ad)
    for _, layer in ad.named_layers():
        assert len(layer.J) == 3 and layer.transform_factors() is not None

        def reference(x, layer=layer):
            a1, a2, a3 = (core[:, :, 0, 0] for core in layer.T_cores)
            t = torch.kron(torch.kron(a1, a2), a3)
            w = layer.base.weight @ t + layer.config.alpha / math.sqrt(layer.config.r) * layer.residual()
            return torch.nn.functional.linear(x, w, layer.base.bias)

        x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(4))
        params = [p for p in layer.parameters() if p.requires_grad]
        assert_matches_reference(layer, reference, params, x)
