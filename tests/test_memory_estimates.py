"""Byte estimates of the variants that cannot be built on ``meta`` (issue 16, item 3): LoCA, QWHA and Uni-LoRA.

``memory.adaptation_bytes`` counts an adapter by building it on the ``meta`` device; these three read values while
they are built (LoCA's DCT basis and QWHA's Hadamard matrix come from NumPy/SciPy, QWHA's AdaAlloc calls ``.item()``,
Uni-LoRA's slots are assigned in NumPy and counted with ``bincount``), so each declares ``estimate_bytes(cfg,
shapes)``: the peak bytes of building it, which is what has to fit. Checked here three ways:

* what a real build keeps (parameters and buffers, the base weights left out) equals the ``kept`` part of the
  variant's ``build_bytes``, exactly, on synthetic:lowrank's two 64×64 layers and on a 48×80 layer;
* the estimate is within 2× of the peak resident memory a real build reaches (with glibc's mmap threshold fixed
  for the measurement, so that freed temporaries go back to the system and the peak is the build's own);
* an absurd request is refused with a ConfigError naming the variant and the estimate, in under a second and
  without the resident memory growing.

The estimate is compared with the build's *peak*, not with the bytes kept: the build temporaries are the larger part
on small layers (QWHA's float64 initialisation holds about 5× what the layer keeps, LoCA's float64 DCT 1.4–3×), so
an estimate of the kept bytes alone would let through builds that do not fit.
"""

from __future__ import annotations

import ctypes
import gc
import re
import time
from contextlib import contextmanager

import pytest
from torch import nn

import workbench as wb
from workbench import memory
from workbench.errors import ConfigError
from workbench.variant import get_variant
from workbench.variants.basis import uni_lora
from workbench.variants.frequency import loca, qwha

VARIANTS = ("loca", "qwha", "uni-lora")


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setenv(memory.LIMIT_ENV, "64MiB")


def kept_bytes(name: str, cfg, shapes: dict[str, tuple[int, int]]) -> int:
    """The ``kept`` part of the variant's own ``build_bytes`` (per layer for LoCA and QWHA, shared for Uni-LoRA)."""
    if name == "uni-lora":
        return uni_lora.build_bytes(cfg, shapes)[0]
    module = loca if name == "loca" else qwha
    return sum(module.build_bytes(cfg, o, i)[0] for o, i in shapes.values())


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("layout", ["synthetic:lowrank", "48x80"])
def test_the_estimate_knows_every_tensor_a_real_build_keeps(name, layout):
    if layout == "synthetic:lowrank":
        task = wb.tasks.get("synthetic:lowrank")
        model, targets = task.model(), task.targets
    else:
        model, targets = nn.Sequential(nn.Linear(80, 48)), ["0"]
    originals = list(model.parameters())  # the base weights: not the adapter's (a copy a layer makes counts)
    cls = get_variant(name)
    cfg = cls.Config.from_kwargs({})
    ad = wb.adapt(model, name, targets)
    shapes = {n: (layer.out_features, layer.in_features) for n, layer in ad.named_layers()}
    real = memory.tensor_bytes([t for _, layer in ad.named_layers() for t in [*layer.parameters(), *layer.buffers()]]
                               + ([*ad.shared.parameters(), *ad.shared.buffers()] if ad.shared is not None else []),
                               skip=originals)
    assert real > 0
    assert kept_bytes(name, cfg, shapes) == real
    estimate = memory.adaptation_bytes(cls, cfg, shapes)  # None before: the meta build fails and nothing answered
    assert estimate == cls.estimate_bytes(cfg, shapes)
    assert estimate >= real


def _status(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def _restart_peak() -> int:
    """Restart the resident peak (VmHWM) from the resident size now, and return that size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


@contextmanager
def _fixed_mmap_threshold(size: int = 16 * 1024):
    """glibc serves blocks of ``size`` bytes and more with mmap and unmaps them when freed: a freed temporary goes
    back to the system instead of staying in the heap, so the resident peak of a build is its own (the default
    threshold moves up to 32 MiB, and then the heap keeps earlier temporaries resident or fragments around them)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, size)
    try:
        yield libc
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # glibc's initial threshold


M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h

PEAK_CASES = [
    ("loca", [(768, 1280)], {"n": 64}),                             # C_in's float64 DCT: 4·768² + 16·1280²
    ("qwha", [(512, 384)], {"calib_batches": 0}),                   # the float64 initialisation, a Paley width
    ("uni-lora", [(64, 64), (64, 64)], {"d": 2_000_000}),           # d-bound: bincount, mask and scales (17·d)
    ("uni-lora", [(512, 512), (512, 512)], {"r": 256, "d": 1000}),  # entry-bound: the concatenated slots (16·D)
]


@pytest.mark.parametrize("name, layers, config", PEAK_CASES)
def test_the_estimate_is_within_twice_the_peak_a_real_build_reaches(name, layers, config):
    targets = [str(k) for k in range(len(layers))]
    shapes = dict(zip(targets, layers))
    cls = get_variant(name)
    estimate = cls.estimate_bytes(cls.Config.from_kwargs(config), shapes)
    with _fixed_mmap_threshold() as libc:
        wb.adapt(nn.Sequential(*[nn.Linear(i, o) for o, i in layers]), name, targets, **config)  # warm up: first
        model = nn.Sequential(*[nn.Linear(i, o) for o, i in layers])                # calls' buffers and caches
        gc.collect()
        libc.malloc_trim(0)
        start = _restart_peak()
        ad = wb.adapt(model, name, targets, **config)
        peak = _status("VmHWM") - start
    assert ad.module_names == targets
    assert peak > 4 * 1024**2  # large enough for the measurement to mean something
    assert 0.5 <= estimate / peak <= 2.0, f"{name} {layers} {config}: estimate {estimate}, peak {peak}"


def _peak_growth(fn) -> tuple[float, int]:
    """Seconds ``fn`` took and how far the resident peak rose above the resident size it started from."""
    start, t0 = _restart_peak(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _status("VmHWM") - start


@pytest.mark.parametrize("name, config, shapes", [
    ("loca", {}, {"q": (60_000, 60_000)}),                       # 29 GB kept, 72 GB at the peak (DCT)
    ("qwha", {}, {"q": (10_000_000, 256)}),                      # 20 GB kept (W0, W_Q), 188 GB at the peak
    ("uni-lora", {"d": 100_000_000}, {"q": (64, 64), "v": (64, 64)}),  # the largest d allowed: 2.1 GB at the peak
])
def test_an_absurd_adapter_is_refused_before_anything_is_allocated(small_limit, name, config, shapes):
    cls = get_variant(name)
    cfg = cls.Config.from_kwargs(config)
    estimate = cls.estimate_bytes(cfg, shapes)
    assert estimate > 1024**3
    caught = []

    def refuse():
        with pytest.raises(ConfigError) as info:
            memory.check_adaptation(cls, cfg, shapes)
        caught.append(str(info.value))

    seconds, growth = _peak_growth(refuse)
    assert re.match(rf"{re.escape(name)}: .* needs about {memory.format_bytes(estimate)} for its adapter on "
                    rf"{len(shapes)} layer\(s\)", caught[0]), caught[0]
    assert memory.LIMIT_ENV in caught[0]
    assert seconds < 1.0
    assert growth < 32 * 1024**2


def test_adapt_refuses_them_before_wrapping_any_layer(monkeypatch):
    monkeypatch.setenv(memory.LIMIT_ENV, "2MiB")
    for name, config in (("loca", {}), ("qwha", {}), ("uni-lora", {"d": 1_000_000})):
        model = nn.Sequential(nn.Linear(256, 512))
        with pytest.raises(ConfigError, match=rf"^{re.escape(name)}: .* needs about [0-9.]+ MiB for its adapter"):
            wb.adapt(model, name, ["0"], **config)
        assert type(model[0]) is nn.Linear and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="d"):  # beyond d's declared range: refused before any estimate
        wb.adapt(nn.Sequential(nn.Linear(64, 64)), "uni-lora", ["0"], d=10**10)
