"""Seeded random streams that belong to one run, not to the process.

``torch.manual_seed`` seeds the *process-wide* generator, which every thread draws from: with four runs training at
once (the dashboard's job queue, a user's thread pool), a seed-0 LoRA differed from its solo result in 3 of 5
repetitions, by up to 11% (issue 16.4). Each draw the workbench makes (initialisations, random bases, dropout
masks, stochastic gates) therefore takes its generator from here::

    with rng.seeded(seed):                  # adapt() and train() open one for their run
        torch.randn(r, d, generator=rng.generator(device))
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=rng.generator(w.device))

The current generators live in a :class:`contextvars.ContextVar`, so each thread (and each asyncio task) sees its
own: a run's stream is the same whatever else runs beside it. Outside any ``seeded`` block :func:`generator` returns
``None``, which torch reads as "the global generator", so code that adapts a model by hand keeps working with
``torch.manual_seed``. One generator is made per device on first use: on the CPU it is seeded with the block's seed
itself (the stream ``torch.manual_seed(seed)`` gives, so single-threaded results are unchanged), on an accelerator
with a seed derived from the block's seed and the device, so the CPU stream does not depend on CUDA draws.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["seeded", "generator", "fork", "derive", "svd_lowrank", "Dropout"]


class _Streams:
    def __init__(self, seed: int):
        self.seed = int(seed)
        self.by_device: dict[str, torch.Generator] = {}

    def get(self, device: torch.device | str | None) -> torch.Generator:
        dev = torch.device(device if device is not None else "cpu")
        key = f"{dev.type}:{dev.index if dev.index is not None else 0}" if dev.type != "cpu" else "cpu"
        g = self.by_device.get(key)
        if g is None:
            # the CPU stream is torch.manual_seed(seed)'s own, so a run draws what it drew from the global generator
            g = torch.Generator(device=dev).manual_seed(self.seed if key == "cpu" else derive(self.seed, key))
            self.by_device[key] = g
        return g


_current: contextvars.ContextVar[_Streams | None] = contextvars.ContextVar("workbench_rng", default=None)


def derive(seed: int, *labels: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``labels`` (stable across processes and Python versions)."""
    text = ":".join([str(int(seed)), *map(str, labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draws inside the block come from generators seeded by ``seed``, private to this thread/context."""
    token = _current.set(_Streams(seed))
    try:
        yield
    finally:
        _current.reset(token)


def generator(device: torch.device | str | None = None) -> torch.Generator | None:
    """The current run's generator for ``device`` (CPU when ``None``), or ``None`` outside :func:`seeded` (torch's
    global generator)."""
    streams = _current.get()
    return None if streams is None else streams.get(device)


@contextlib.contextmanager
def fork() -> Iterator[None]:
    """Draws inside the block do not advance the current run's streams: their states are saved on entry and
    restored on exit (the run-stream counterpart of ``torch.random.fork_rng``, for probes that run a forward pass of
    their own). A stream first used inside the block is forgotten on exit, so it starts afresh afterwards."""
    streams = _current.get()
    if streams is None:
        yield
        return
    saved = {key: g.get_state() for key, g in streams.by_device.items()}
    try:
        yield
    finally:
        for key in list(streams.by_device):
            if key in saved:
                streams.by_device[key].set_state(saved[key])
            else:
                del streams.by_device[key]


def svd_lowrank(a: torch.Tensor, q: int, niter: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.svd_lowrank(a, q, niter)`` (Halko, Martinsson & Tropp 2011, Alg. 4.4 with 5.1), drawing its Gaussian
    test matrix from the run's :func:`generator`: torch's version takes no generator and draws from the global one.
    With the global generator seeded like the run's stream it returns torch's result (tested)."""
    m, n = a.shape[-2:]
    tall = a if m >= n else a.mH
    test = torch.randn(tall.shape[-1], q, dtype=tall.dtype, device=tall.device, generator=generator(tall.device))
    basis = torch.linalg.qr(tall @ test).Q
    for _ in range(niter):  # subspace iterations sharpen the basis where the spectrum decays slowly
        basis = torch.linalg.qr(tall.mH @ basis).Q
        basis = torch.linalg.qr(tall @ basis).Q
    u, s, vh = torch.linalg.svd(basis.mH @ tall, full_matrices=False)
    u, v = basis @ u, vh.mH
    return (u, s, v) if m >= n else (v, s, u)


class Dropout(nn.Module):
    """``nn.Dropout`` whose mask comes from the run's generator (:func:`generator`), so that concurrent runs with
    dropout stay reproducible. Inverted dropout, as torch's: kept entries are scaled by 1/(1 − p)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p={p} must be in [0, 1)")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=generator(x.device))
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
