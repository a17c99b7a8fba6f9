"""Probes that scale (issue 24): the fast paths against the exact computations they replace, on small layers.

Every approximation is forced on small layers (``exact_side=0``) and compared with the exact value: top-10 singular
values within 1e-3 relative, the same intruder count on fixed seeds; the exact fast paths (factors, FFT-based DCT,
fast Walsh–Hadamard transform, the gradients probe's compact ΔW_before) to float rounding; the caches are hit, and
invalidated by an in-place write.
"""

from __future__ import annotations

import math

import pytest
import scipy.fft
import scipy.linalg
import torch
from torch import nn

import workbench as wb
from workbench.memory import storage_bytes
from workbench.probes import ProbeContext, get_probes
from workbench.probes import limits as limits_mod
from workbench.probes import spectra as sp
from workbench.probes.base import probe_cache
from workbench.probes.frequency import dct_ii, dct_map, fwht, wht_map
from workbench.probes.gradients import _dense_before, _saved_updates


def _decaying_layer(seed: int, m: int = 96, n: int = 64) -> nn.Linear:
    """A layer whose W0 has a pretrained-like decaying spectrum 3·(1 → 0.05)² (the regime of real checkpoints)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, m, generator=g)).Q[:, :n]
    v = torch.linalg.qr(torch.randn(n, n, generator=g)).Q
    lin = nn.Linear(n, m)
    with torch.no_grad():
        lin.weight.copy_(u @ torch.diag(3 * torch.linspace(1, 0.05, n) ** 2) @ v.t())
    lin.requires_grad_(False)
    return lin


def _lora_on(seed: int, scale: float, r: int = 4):
    model = nn.Sequential(_decaying_layer(seed))
    ad = wb.adapt(model, "lora", ["0"], r=r)
    g = torch.Generator().manual_seed(100 + seed)
    layer = ad.layer("0")
    with torch.no_grad():
        layer.lora_B.copy_(scale * torch.randn(layer.lora_B.shape, generator=g))
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g))
    return ad, layer


def _records(result):
    return {(m, k): v for m, k, v in result.records}


# -- ΔW's top singular vectors through the factors (exact) ---------------------------------------------------------

@pytest.mark.parametrize("variant", ["lora", "dora", "pissa"])
def test_update_svd_through_factors_equals_the_dense_svd(variant):
    ad, _ = _lora_on(0, 0.3) if variant == "lora" else (wb.adapt(nn.Sequential(_decaying_layer(1)), variant, ["0"],
                                                                  r=4), None)
    layer = ad.layer("0")
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    delta = layer.update().detach()
    u, s, v = sp.update_svd(layer, 3)
    exact = torch.linalg.svd(delta)
    torch.testing.assert_close(s, exact.S[:3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((u.t() @ exact.U[:, :3]).abs().diagonal(), torch.ones(3), atol=1e-3, rtol=0)
    torch.testing.assert_close((v.t() @ exact.Vh[:3].t()).abs().diagonal(), torch.ones(3), atol=1e-3, rtol=0)
    if layer.update_factors() is not None:  # the factored path really ran: rank-r output, orthonormal columns
        torch.testing.assert_close(u.t() @ u, torch.eye(3), atol=1e-5, rtol=0)


def test_randomized_top_svd_of_a_dense_update_is_within_1e_3():
    g = torch.Generator().manual_seed(3)
    q1, q2 = (torch.linalg.qr(torch.randn(d, d, generator=g)).Q for d in (120, 80))
    mat = q1[:, :80] @ torch.diag(0.7 ** torch.arange(80.0)) @ q2.t()  # a dense ΔW with a decaying spectrum
    _, s, _ = sp.top_svd(mat, 10, exact_side=0)
    exact = torch.linalg.svdvals(mat)[:10]
    assert float(((s - exact).abs() / exact).max()) < 1e-3
    before = torch.random.get_rng_state()
    sp.top_svd(mat, 10, exact_side=0)
    assert torch.equal(before, torch.random.get_rng_state())  # the global generator is not drawn from
    u1, _, _ = sp.top_svd(mat, 10, exact_side=0)
    u2, _, _ = sp.top_svd(mat, 10, exact_side=0)
    assert torch.equal(u1, u2)  # its own seeded stream: the same answer wherever it is called


# -- intruder dimensions: approximate path against the exact count --------------------------------------------------

@pytest.mark.parametrize("scale", [0.02, 0.05, 0.1])
def test_approximate_intruders_match_the_exact_count_and_top10_spectrum(scale):
    counts = []
    for seed in range(4):
        ad, layer = _lora_on(seed, scale)
        w0 = layer.pretrained_weight().detach()
        w = w0 + layer.update().detach()
        exact = sp.intruder_dimensions(w0, w, k=sp.INTRUDER_K)
        probe = sp.SpectraProbe()
        probe.exact_side = 0  # force the approximation on this small layer
        state: dict = {}
        for call in range(2):  # the first call from W0's basis, the second warm-started from the first's answer
            rec = _records(probe.after_step(ProbeContext(adaptation=ad, state=state)))
            assert rec[("0", "intruder_approximate")] == 1.0
            assert rec[("0", "intruder_dimensions")] == exact, (seed, call)
        u0, _, approximate = sp.base_decomposition(w0, exact_side=0)
        assert approximate and u0.shape[1] == sp.BASE_DIM
        _, ritz = sp.top_left_vectors(w, 10, [u0, sp.update_svd(layer, 10)[0]])
        top = torch.linalg.svdvals(w)[:10]
        assert float(((ritz - top).abs() / top).max()) < 1e-3
        counts.append(exact)
    assert scale < 0.05 or max(counts) > 0  # the larger updates do make intruders: the match is not all zeros


def test_exact_path_is_kept_on_small_layers():
    ad, layer = _lora_on(0, 0.1)
    rec = _records(sp.SpectraProbe().after_step(ProbeContext(adaptation=ad, state={})))
    assert ("0", "intruder_approximate") not in rec
    w0 = layer.pretrained_weight().detach()
    assert rec[("0", "intruder_dimensions")] == sp.intruder_dimensions(w0, w0 + layer.update().detach())


# -- subspace similarity with a cached reference SVD ---------------------------------------------------------------

def test_subspace_similarity_from_factors_equals_dense_and_reference_svd_is_cached(monkeypatch):
    ad, layer = _lora_on(2, 0.2)
    g = torch.Generator().manual_seed(5)
    ref = {"0": torch.randn(96, 3, generator=g) @ torch.randn(3, 64, generator=g)}
    calls = []
    real = sp.top_svd
    monkeypatch.setattr(sp, "top_svd", lambda *a, **k: calls.append(1) or real(*a, **k))
    probe = get_probes(["spectra"])[0]
    state: dict = {}
    rec = _records(probe.after_step(ProbeContext(adaptation=ad, reference=ref, state=state)))
    delta = layer.update().detach()
    left, right = sp.subspace_similarities(delta, ref["0"], 3, 3)
    assert rec[("0", "subspace_similarity")] == pytest.approx(left, abs=1e-4)
    assert rec[("0", "subspace_similarity_right")] == pytest.approx(right, abs=1e-4)
    n_first = len(calls)
    probe.after_step(ProbeContext(adaptation=ad, reference=ref, state=state))
    assert len(calls) == n_first  # the reference is decomposed once per run
    with torch.no_grad():
        ref["0"].mul_(2.0)  # an in-place write bumps the tensor's version: the cache must not serve it stale
    probe.after_step(ProbeContext(adaptation=ad, reference=ref, state=state))
    assert len(calls) == n_first + 1


def test_base_decomposition_is_cached_and_invalidated_by_merge(monkeypatch):
    ad, layer = _lora_on(1, 0.1)
    calls = []
    real = sp.base_decomposition
    monkeypatch.setattr(sp, "base_decomposition", lambda *a, **k: calls.append(1) or real(*a, **k))
    probe = sp.SpectraProbe()
    for _ in range(3):
        probe.after_step(ProbeContext(adaptation=ad, state={}))  # a fresh state each time: the instance caches
    assert len(calls) == 1 and len(probe_cache(probe)) == 1
    layer.merge()
    layer.unmerge()  # base.weight was written in place twice: W0 is (to rounding) the same, but it is recomputed
    probe.after_step(ProbeContext(adaptation=ad, state={}))
    assert len(calls) == 2
    other, _ = _lora_on(1, 0.1)  # another adaptation of equal shape: its own entry
    probe.after_step(ProbeContext(adaptation=other, state={}))
    assert len(calls) == 3


def test_limits_base_norm_is_cached_and_its_approximation_is_within_1e_3(monkeypatch):
    lin = _decaying_layer(4, 64, 64)
    w = lin.weight.detach()
    exact = float(torch.linalg.matrix_norm(w, 2))
    monkeypatch.setattr(limits_mod, "EXACT_SIDE", 0)
    monkeypatch.setattr(sp, "EXACT_SIDE", 0)
    assert limits_mod._spectral_norm(w, "q") == pytest.approx(exact, rel=1e-3)


# -- frequency maps: fast transforms equal the dense ones ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(48, 20), (7, 33), (64, 64)])
def test_fft_dct_equals_scipy(shape):
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.from_numpy(scipy.fft.dctn(x.numpy(), norm="ortho"))
    torch.testing.assert_close(dct_ii(dct_ii(x, 0), 1), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dct_map(x.float()), expected.abs().float(), rtol=1e-5, atol=1e-6)
    assert dct_map(x.float()).device == x.device


@pytest.mark.parametrize("shape", [(48, 20), (5, 64), (16, 3)])
def test_fast_walsh_hadamard_equals_the_dense_matrix(shape):
    d = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    m, n = (1 << math.ceil(math.log2(s)) for s in shape)
    h = lambda k: torch.from_numpy(scipy.linalg.hadamard(k)).float() / math.sqrt(k)  # noqa: E731
    padded = nn.functional.pad(d, (0, n - shape[1], 0, m - shape[0]))
    torch.testing.assert_close(wht_map(d), (h(m) @ padded @ h(n)).abs(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wht_map(d, "input"), (padded[:shape[0]] @ h(n)).abs(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fwht(fwht(padded, 1), 1), padded, rtol=1e-5, atol=1e-5)  # orthonormal, involutive
    with pytest.raises(ValueError, match="power of two"):
        fwht(torch.ones(6))


# -- gradients probe: no dense copy of ΔW_before for a factored layer ------------------------------------------------

@pytest.mark.parametrize("variant", ["lora", "fourierft"])
def test_gradients_probe_keeps_a_compact_before_and_the_same_step(variant):
    model = nn.Sequential(_decaying_layer(0, 96, 64))
    kw = {"r": 4} if variant == "lora" else {"n_frequency": 20}
    ad = wb.adapt(model, variant, ["0"], **kw)
    layer = ad.layer("0")
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    dense_before = layer.update().detach().clone()
    saved = _saved_updates(ad)
    kind, _ = saved["0"]
    assert kind == ("factors" if variant == "lora" else "tensors")
    if variant == "lora":  # O((m+n)r), not an m×n fp32 copy
        assert storage_bytes(saved["0"][1]) < 96 * 64 * 4 / 2
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(0.01)  # "the step"
    before = _dense_before(ad, layer, saved["0"])
    torch.testing.assert_close(before, dense_before, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(layer.update().detach(), dense_before)  # the live layer did move


def test_top_energy_fraction_by_selection_equals_the_sorted_sum():
    from workbench.probes.frequency import top_energy_fraction

    x = torch.randn(50, 40, generator=torch.Generator().manual_seed(2))
    x[0, :5] = 3.0  # ties at the threshold
    e = (x.flatten().double() ** 2).sort(descending=True).values
    for fraction in (0.01, 0.1, 1.0):
        k = max(1, int(len(e) * fraction))
        assert top_energy_fraction(x, fraction) == pytest.approx(float(e[:k].sum() / e.sum()), rel=1e-6)


@pytest.mark.parametrize("sides", ["both", "input"])
def test_factored_maps_equal_the_dense_maps(sides):
    from workbench.probes.frequency import factored_maps, fft_map

    g = torch.Generator().manual_seed(4)
    b, a = torch.randn(40, 3, generator=g), torch.randn(3, 24, generator=g)
    maps = factored_maps(b, a, sides)
    delta = b @ a
    torch.testing.assert_close(maps["dct"], dct_map(delta), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps["fft"], fft_map(delta), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps["wht"], wht_map(delta, sides), rtol=1e-4, atol=1e-5)
