"""A seed means the same run whatever else runs beside it (issue 16.4): every draw comes from a per-run stream."""

import sys
import threading

import pytest
import torch

import workbench as wb
from workbench import rng


def _hammer(stop: threading.Event) -> None:
    # another "run" in the same process, drawing from torch's global generator as fast as it can
    while not stop.is_set():
        torch.manual_seed(12345)
        torch.randn(64)


def _adapter(variant: str, **config) -> dict[str, torch.Tensor]:
    task = wb.tasks.get("synthetic:lowrank")
    ad = wb.adapt(task.model(), variant, task.targets, seed=3, **config)
    return {k: v.detach().clone() for k, v in ad.state_dict().items()}


def test_generator_is_private_to_each_thread_and_none_outside():
    assert rng.generator() is None
    seen = {}

    def draw(name, seed):
        with rng.seeded(seed):
            seen[name] = torch.rand(8, generator=rng.generator())

    threads = [threading.Thread(target=draw, args=(f"t{i}", i % 2)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(seen["t0"], seen["t2"]) and torch.equal(seen["t1"], seen["t3"])
    assert not torch.equal(seen["t0"], seen["t1"])
    # the CPU stream is torch.manual_seed's own: single-threaded results did not change
    assert torch.equal(seen["t0"], torch.rand(8, generator=torch.Generator().manual_seed(0)))


EXTRA = {"loca": {"n": 64}, "fourierft": {"init_zero": False}, "pissa": {"niter": 2}}  # draws that defaults skip


@pytest.mark.parametrize("variant", wb.variant_names())
def test_initialisation_is_the_same_while_another_thread_draws(variant):
    config = {**wb.get_variant(variant).example_config, **EXTRA.get(variant, {})}
    solo = _adapter(variant, **config)
    stop = threading.Event()
    noise = threading.Thread(target=_hammer, args=(stop,), daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # let the threads interleave between any two draws (torch.randn holds the GIL)
    noise.start()
    try:
        busy = [_adapter(variant, **config) for _ in range(2)]
    finally:
        stop.set()
        noise.join()
        sys.setswitchinterval(interval)
    # QWHA's least-squares init (torch.linalg.lstsq) differs in the last bit between identical calls in one process,
    # threads or not (3e-8 once in 12 sequential builds: LAPACK's paths depend on memory alignment); it draws nothing
    exact = variant != "qwha"
    for state in busy:
        assert state.keys() == solo.keys()
        for k in solo:
            same = torch.equal(state[k], solo[k]) if exact else torch.allclose(state[k], solo[k], rtol=0, atol=1e-6)
            assert same, f"{variant}: {k} changed while another thread drew"


def test_dropout_masks_come_from_the_run_stream():
    drop = rng.Dropout(0.5).train()
    x = torch.ones(1000)
    with rng.seeded(7):
        a = drop(x)
    torch.manual_seed(0)
    torch.rand(100)  # the global generator moves; the run's stream does not care
    with rng.seeded(7):
        b = drop(x)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept entries scaled by 1/(1 - p)
    assert 0.4 < float((a == 0).float().mean()) < 0.6
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="p=1.0"):
        rng.Dropout(1.0)


@pytest.mark.parametrize("shape", [(40, 12), (12, 40)])
def test_svd_lowrank_is_torchs_on_the_run_stream(shape):
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        u0, s0, v0 = torch.svd_lowrank(a, q=4, niter=2)
    with rng.seeded(5):
        u, s, v = rng.svd_lowrank(a, q=4, niter=2)
    assert torch.allclose(s, s0, atol=1e-10)
    assert torch.allclose(u @ torch.diag(s) @ v.T, u0 @ torch.diag(s0) @ v0.T, atol=1e-10)


def test_a_run_with_dropout_is_the_same_while_other_runs_train():
    # the dashboard's queue trains several runs in threads of one process: each must be its solo self
    def final(seed, out=None):
        run = wb.train("synthetic:lowrank", "lora", steps=25, seed=seed, probes=None, progress=False, dropout=0.3)
        state = {k: v.clone() for k, v in run.adaptation.adapter_state().items()}
        if out is not None:
            out[seed] = state
        return state

    solo = final(0)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        results: dict[int, dict] = {}
        threads = [threading.Thread(target=final, args=(seed, results)) for seed in (0, 1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    for k in solo:
        assert torch.equal(results[0][k], solo[k]), f"{k} differs from the solo run"
    assert not torch.equal(results[1]["layers.0.lora_A"] if "layers.0.lora_A" in results[1] else
                           next(iter(results[1].values())), next(iter(solo.values())))


def test_fork_leaves_the_run_stream_where_it_was():
    with rng.seeded(4):
        torch.rand(3, generator=rng.generator())
        with rng.fork():
            torch.rand(5, generator=rng.generator())  # a probe's own forward pass
        after = torch.rand(3, generator=rng.generator())
    with rng.seeded(4):
        torch.rand(3, generator=rng.generator())
        expected = torch.rand(3, generator=rng.generator())
    assert torch.equal(after, expected)
