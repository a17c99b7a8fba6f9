"""Evidence for the frequency variants (FourierFT, LoCA, FoRA, QWHA): equality with PEFT, LoCA's support recovery and
location gradient, FoRA's token mixing, QWHA's quantization-error correction and Hadamard orders. The random-basis and
tiny variants have their own files (test_basis_variants.py, test_tiny_variants.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import workbench as wb
from workbench.events import StepContext


@pytest.fixture
def peft():
    """PEFT, for the tests that compare with it: only they are skipped where it is not installed."""
    return pytest.importorskip("peft")
X = torch.randn(5, 7, 32, generator=torch.Generator().manual_seed(3))


def test_fourierft_equals_peft_with_the_same_entries_and_coefficients(peft):
    ad = wb.adapt(tiny_model(), "fourierft", ["0", "2"], n_frequency=100, scaling=150.0)
    pm = peft.get_peft_model(tiny_model(), peft.FourierFTConfig(target_modules=["0", "2"], n_frequency=100,
                                                                scaling=150.0))
    with torch.no_grad():
        for name, layer in ad.named_layers():
            theirs = pm.base_model.model.get_submodule(name)
            assert torch.equal(layer.entries, theirs.indices["default"])  # the same seeded entries
            layer.spectrum.copy_(torch.randn(100))
            theirs.fourierft_spectrum["default"].copy_(layer.spectrum)
            torch.testing.assert_close(layer.delta_weight(), theirs.get_delta_weight("default"), atol=1e-5,
                                       rtol=1e-5)
        torch.testing.assert_close(ad.model(X), pm(X), atol=1e-5, rtol=1e-5)
    assert ad.num_trainable() == 2 * 100  # n per layer


def _dct_support_coverage(task, ad, locations) -> float:
    """Fraction of the true ΔW's non-zero DCT coefficients that the adapter's locations sit on (mean over layers)."""
    import scipy.fft

    truth, out = task.reference_delta(), []
    for name, layer in ad.named_layers():
        support = torch.from_numpy(abs(scipy.fft.dctn(truth[name].double().numpy(), norm="ortho")) > 1e-6)
        loc = locations(layer)
        hit = torch.zeros_like(support)
        hit[loc[:, 0], loc[:, 1]] = True
        out.append(float((hit & support).sum() / support.sum()))
    return sum(out) / len(out)


def test_loca_finds_more_of_the_true_dct_support_than_fourierft_and_fits_better():
    task = wb.tasks.get("synthetic:dct")  # 128 non-zero DCT coefficients per layer
    kw = dict(steps=600, lr=1e-2, probes=(), progress=False)
    loca = wb.train(task, "loca", n=128, loc_lr=1e-2, search_fraction=0.5, **kw)
    fourier = wb.train(task, "fourierft", n_frequency=128, init_zero=True, **kw)
    loca_cov = _dct_support_coverage(task, loca.adaptation, lambda layer: layer.grid_locations())
    fourier_cov = _dct_support_coverage(task, fourier.adaptation, lambda layer: layer.entries.t())
    assert loca_cov > 2 * fourier_cov
    assert loca.summary["metric_value"] < fourier.summary["metric_value"]
    assert loca.summary["trainable_params"] == fourier.summary["trainable_params"] == 2 * 128  # locations frozen


def test_loca_location_gradient_is_the_clipped_central_difference():
    from workbench.variants.frequency.loca import _SparseSpectrum

    coef = torch.tensor([2.0], requires_grad=True)
    loc = torch.tensor([[0.5], [0.25]], requires_grad=True)  # rows 4, cols 8 -> index (round(1.998), round(1.748))
    s = _SparseSpectrum.apply(coef, loc, 5, 9)
    grad_s = torch.arange(45.0).view(5, 9) / 100
    s.backward(grad_s)
    r, c = 2, 2
    assert coef.grad.item() == pytest.approx(grad_s[r, c].item())
    row = min(max(0.5 * 2.0 * (grad_s[r + 1, c] - grad_s[r - 1, c]).item(), -1), 1) * 4
    col = min(max(0.5 * 2.0 * (grad_s[r, c + 1] - grad_s[r, c - 1]).item(), -1), 1) * 8
    torch.testing.assert_close(loc.grad, torch.tensor([[row], [col]]))


@pytest.mark.parametrize("bits,quantizer", [(2, "rtn"), (3, "rtn"), (4, "nf")])
def test_qwha_init_corrects_more_quantization_error_than_zero_or_svd_lora(bits, quantizer):
    task = wb.tasks.get("synthetic:fullrank")
    r = 4
    ad = wb.adapt(task.model(), "qwha", task.targets, r=r, bits=bits, quantizer=quantizer, group_size=32,
                  calib_batches=8)
    ad.variant.prepare(StepContext.standalone(ad, total_steps=10, task=task), task.batches("train", batch_size=64))
    x = torch.cat([b["x"] for b, _ in zip(task.batches("val", batch_size=256), range(2))])
    seen = {}  # each layer's real inputs on held-out data
    hooks = [layer.register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, a[0].detach()))
             for name, layer in ad.named_layers()]
    with torch.no_grad():
        ad.model(x)
    for h in hooks:
        h.remove()
    for name, layer in ad.named_layers():
        inputs = seen[name]
        dq = layer.quant_error().detach()
        u, s, vh = torch.linalg.svd(dq)
        svd_lora = (u[:, :r] * s[:r]) @ vh[:r]  # an SVD-initialised LoRA of rank r: the same parameter count
        err = {"zero": torch.linalg.matrix_norm(inputs @ dq.t()),
               "svd-lora": torch.linalg.matrix_norm(inputs @ (dq - svd_lora).t()),
               "qwha": torch.linalg.matrix_norm(inputs @ (dq - layer.delta_weight().detach()).t())}
        assert layer.p == r * (64 + 64)
        assert err["qwha"] < err["svd-lora"] < err["zero"], (name, {k: float(v) for k, v in err.items()})


def test_quantizer_levels_and_error():
    from workbench.variants.frequency.qwha import quantize

    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    errors = [float((quantize(w, b, 32, "rtn") - w).norm()) for b in (2, 3, 4)]
    assert errors[0] > errors[1] > errors[2] > 0  # more bits, less error
    q = quantize(w, 2, 32, "rtn")
    assert all(len(torch.unique(q[i, g * 32:(g + 1) * 32])) <= 4 for i in range(16) for g in range(2))


@pytest.mark.parametrize("tokens,grid", [(16, (0, 4)), (17, (1, 4)), (12, None)])
def test_fora_mixes_tokens_on_their_grid(tokens, grid):
    lin = torch.nn.Linear(32, 32)
    ad = wb.adapt(torch.nn.Sequential(lin), "fora", ["0"], r=4)
    layer = ad.layer("0")
    assert layer._grid(tokens) == grid
    with torch.no_grad():
        layer.up.normal_()
    x = torch.randn(2, tokens, 32)
    y = layer.delta_forward(x)
    x2 = x.clone()
    x2[:, -1] += 1.0  # change the last token only
    changed = (layer.delta_forward(x2) - y).abs().amax(-1)[0]
    assert int((changed > 1e-6).sum()) > 1  # its neighbours' updates change too: the update is not per-token
    if grid is not None and grid[0] == 1:
        assert changed[0] < 1e-6  # the [CLS] token skips the grid mixing


def test_fora_adapts_the_digits_vit():
    run = wb.train(wb.tasks.get("digits:rotate"), "fora", steps=60, lr=3e-3, r=4, progress=False, every=20)
    assert run.status == "completed"
    assert run.summary["metric_value"] > run.summary["init_metric_value"] + 0.1
    assert run.metrics[run.metrics.probe == "spectra"].empty  # no ΔW to take a spectrum of


@pytest.mark.parametrize("n", [12, 20, 48, 384])
def test_hadamard_matrices_beyond_powers_of_two(n):
    from workbench.variants.frequency.qwha import hadamard

    h = hadamard(n)
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(h @ h.t(), n * torch.eye(n))


def test_qwha_map_is_one_sided_and_its_top_cells_are_its_locations():
    # QWHA's ΔW = F H⁻¹ is transformed along the input only: on the two-sided |H ΔW H| map its locations sat near
    # chance among the top cells (243 of 1,024 against 256); on |ΔW H| every top cell is one of its locations. The
    # "wht" map is the change from the full-precision W0 (quantisation error included, issue 13.1); its own term
    # relative to the quantised base, the map its locations index, is "wht_adapter"
    from workbench.events import StepContext
    from workbench.probes import get_probes
    from workbench.probes.base import ProbeContext

    task = wb.tasks.get("synthetic:lowrank")
    ad = wb.adapt(task.model(), "qwha", task.targets, r=2, bits=4, calib_batches=0)
    ad.variant.prepare(StepContext.standalone(ad, total_steps=1, task=task), None)
    with torch.no_grad():
        for _, layer in ad.named_layers():
            layer.coefficients.normal_()
    out = get_probes(["frequency"])[0].after_step(ProbeContext(adaptation=ad, task=task))
    for name, layer in ad.named_layers():
        assert (name, "wht") in out.arrays
        wht = out.arrays[(name, "wht_adapter")]
        k = layer.rows.numel()
        top = set(torch.topk(wht.flatten(), k).indices.tolist())
        cells = set((layer.rows * wht.shape[1] + layer.cols).tolist())
        assert top == cells, f"{name}: {len(top & cells)} of {k} top cells are QWHA's locations"
        assert (name, "wht_input_side_only", 1.0) in out.records


# ------------------------------------------------- issue 24: the fast paths compute what the formulas say


def _dct(n: int, dtype=torch.float32) -> torch.Tensor:
    """The orthonormal DCT-II matrix, from SciPy (C x = dct(x, norm='ortho'))."""
    import scipy.fft

    return torch.from_numpy(scipy.fft.dct(torch.eye(n, dtype=torch.float64).numpy(), norm="ortho", axis=0)).to(dtype)


@pytest.mark.parametrize("train_locations", [False, True])
def test_loca_fast_delta_matches_the_dense_formula_and_its_gradients(train_locations):
    """ΔW = α C_outᵀ S C_in (Eq. (5)) built densely, S from :class:`_SparseSpectrum` (the finite-difference location
    gradient checked above), against the layer's one-product :class:`_CosineDelta`: outputs, ∂L/∂a and, while the
    locations train, ∂L/∂l. 200 locations on a 12×20 grid, so some coincide (duplicates add up), and two sit
    on the clamped edges."""
    from conftest import assert_matches_reference

    from workbench.variants.frequency.loca import _SparseSpectrum

    ad = wb.adapt(torch.nn.Sequential(torch.nn.Linear(20, 12)), "loca", ["0"], n=200, scaling=2.0)
    layer = ad.layer("0")
    with torch.no_grad():
        layer.coefficients.normal_(generator=torch.Generator().manual_seed(0))
        layer.locations[:, 0], layer.locations[:, 1] = 1.0, 0.0
    layer.locations.requires_grad_(train_locations)
    w0, bias = layer.base.weight, layer.base.bias
    c_out, c_in = _dct(12), _dct(20)

    def reference(x):
        s = _SparseSpectrum.apply(layer.coefficients, layer.locations, 12, 20)
        return torch.nn.functional.linear(x, w0 + 2.0 * c_out.t() @ s @ c_in, bias)

    params = [layer.coefficients, layer.locations] if train_locations else [layer.coefficients]
    x = torch.randn(3, 5, 20, generator=torch.Generator().manual_seed(1))
    assert_matches_reference(layer, reference, params, x)


def test_qwha_kronecker_delta_matches_the_dense_hadamard_formula():
    """ΔW = F H⁻¹ = F Hᵀ / d_in (Eq. (3)) with the dense ±1 H, against the layer's Kronecker-factored product, on a
    Paley width (24 = 12·2) and a split Sylvester one (128 = 16·8): outputs and ∂L/∂c of the sparse coefficients."""
    from conftest import assert_matches_reference

    from workbench.variants.frequency.qwha import hadamard

    model = torch.nn.Sequential(torch.nn.Linear(24, 128), torch.nn.Tanh(), torch.nn.Linear(128, 40))
    ad = wb.adapt(model, "qwha", ["0", "2"], r=2, bits=3, group_size=8, calib_batches=0)
    for name, d_in in (("0", 24), ("2", 128)):
        layer = ad.layer(name)
        assert len(layer.hadamard_parts_list()) == 2
        h = hadamard(d_in)

        def reference(x, layer=layer, h=h):
            f = torch.zeros(layer.out_features, layer.in_features).index_put((layer.rows, layer.cols),
                                                                            layer.coefficients)
            return torch.nn.functional.linear(x, layer.base.weight + f @ h.t() / h.shape[0], layer.base.bias)

        x = torch.randn(3, 5, d_in, generator=torch.Generator().manual_seed(2))
        assert_matches_reference(layer, reference, [layer.coefficients], x, atol=1e-5, rtol=1e-4)


def _fora_reference(layer, x):
    """FoRA's delta path written out (three spatial convolutions summed with the residual, FFT mixing), from the
    layer's own parameters: the formula the fused single-kernel S_spa must reproduce."""
    import torch.nn.functional as F

    z = F.linear(x, layer.down).transpose(1, 2)
    skip_side = layer._grid(x.shape[1])

    def spatial(z):
        if z.dim() == 4:
            return z + sum(F.conv2d(z, k, padding=k.shape[-1] // 2) for k in layer.spatial)
        return z + sum(F.conv1d(z, k[:, :, k.shape[-1] // 2], padding=k.shape[-1] // 2) for k in layer.spatial)

    if skip_side is not None:
        skip, side = skip_side
        body = z[:, :, skip:].reshape(z.shape[0], z.shape[1], side, side)
        body = layer._frequency(spatial(body)).flatten(2)
        z = torch.cat([z[:, :, :skip], body], dim=2)
    else:
        z = layer._frequency(spatial(z))
    return layer.base(x) + F.linear(z.transpose(1, 2), layer.up)


@pytest.mark.parametrize("tokens", [16, 17, 12])
def test_fora_fused_spatial_mixing_matches_the_three_convolutions(tokens):
    """S_spa as one convolution with I + Σ pad(K_k) against z + Σ conv(z, K_k): outputs and the gradients of every
    trainable tensor (W_e, W_d, the three spatial kernels, the spectral kernel), on a 4×4 grid, a [CLS] + 4×4 grid
    and a 12-token sequence (1-D). In float64, so the two orders of summation agree to 1e-10."""
    from conftest import assert_matches_reference

    ad = wb.adapt(torch.nn.Sequential(torch.nn.Linear(32, 24).double()), "fora", ["0"], r=4)
    layer = ad.layer("0")
    with torch.no_grad():
        layer.up.normal_(generator=torch.Generator().manual_seed(0))
    params = [p for p in layer.parameters() if p.requires_grad]
    assert len(params) == 6
    x = torch.randn(2, tokens, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert_matches_reference(layer, lambda x: _fora_reference(layer, x), params, x, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("n", [1, 2, 7, 12, 384])
def test_fft_dct_rows_are_the_orthonormal_dct_matrix_and_its_transpose(n):
    """The FFT DCT LoCA's ΔW uses (issue 24) against SciPy's DCT-II matrix C: dct_rows(x) = C x, idct_rows(y) = Cᵀ y,
    odd and even lengths, float64."""
    from workbench.variants.transforms import dct_rows, idct_rows

    c = _dct(n, torch.float64)
    x = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(dct_rows(x), c @ x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(idct_rows(x), c.t() @ x, atol=1e-12, rtol=1e-12)


def test_kron_matmul_is_the_product_with_the_kronecker_matrix():
    """kron_matmul(x, [K₁, K₂, K₃]) = x (K₁ ⊗ K₂ ⊗ K₃)ᵀ, rectangular factors and leading batch dimensions included."""
    from workbench.variants.transforms import kron_matmul

    g = torch.Generator().manual_seed(0)
    factors = [torch.randn(o, i, dtype=torch.float64, generator=g) for o, i in ((2, 3), (4, 4), (5, 2))]
    x = torch.randn(3, 2, 24, dtype=torch.float64, generator=g)
    full = torch.kron(torch.kron(factors[0], factors[1]), factors[2])
    torch.testing.assert_close(kron_matmul(x, factors), x @ full.t(), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("shape", [(32, 24), (33, 25), (7, 4), (1, 6)])
def test_fourierft_half_spectrum_delta_equals_the_complex_inverse_fft_and_its_gradient(shape):
    """Issue 24: ΔW by a real inverse FFT of the Hermitian half spectrum equals PEFT's α·Re(ifft2(F)), values and
    the coefficients' gradient, for even and odd sizes and with self-conjugate entries ((0, 0), (d/2, ·)) drawn."""
    d_out, d_in = shape
    n = min(40, d_out * d_in)
    ad = wb.adapt(torch.nn.Sequential(torch.nn.Linear(d_in, d_out)), "fourierft", ["0"], n_frequency=n)
    layer = next(layer for _, layer in ad.named_layers())
    entries = layer.entries.clone()
    entries[:, 0] = 0  # (0, 0) and (d_out/2, d_in/2)-like bins are their own conjugates
    entries[:, 1] = torch.tensor([d_out // 2, d_in // 2])
    entries = torch.unique(entries, dim=1)
    from workbench.variants.frequency.fourierft import hermitian_entries

    layer.entries = entries
    layer.half_entries, layer.half_source = hermitian_entries(entries, d_out, d_in)
    layer.spectrum = torch.nn.Parameter(torch.randn(entries.shape[1], generator=torch.Generator().manual_seed(1)))
    ours = layer.delta_weight()
    ref_c = layer.spectrum.detach().clone().requires_grad_(True)
    dense = torch.zeros(d_out, d_in).index_put((entries[0], entries[1]), ref_c)
    ref = torch.fft.ifft2(dense).real * layer.config.scaling
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(2))
    (ours * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(layer.spectrum.grad, ref_c.grad, atol=1e-4, rtol=1e-5)
