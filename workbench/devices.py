"""Where and in what precision the workbench computes: :func:`resolve` (a device name → ``torch.device``) and
:class:`Precision` (autocast for the forward and the loss, a ``GradScaler`` for float16).

``device="auto"`` picks CUDA, then Apple's MPS, then the CPU. Every place that picks a device calls :func:`resolve`,
so ``train()``, the benches and the generator agree on what ``"auto"`` means and refuse a bad name the same way.

Mixed precision follows ``torch.amp`` (Micikevicius et al., 2018, "Mixed Precision Training", ICLR, arXiv:1710.03740):
the forward and the loss run under ``torch.autocast(device_type, dtype)``, so matmuls take bfloat16/float16 inputs,
while every parameter (the frozen model's and the adapter's) stays float32 and the optimizer updates float32 master
weights. float16's narrow range needs loss scaling (§3.2 of the paper): the loss is multiplied by a scale S before
backward, the gradients are divided by S before the step (clipping and gradient probes see true gradients), and a
step whose gradients overflowed is skipped while S shrinks (``torch.amp.GradScaler``). bfloat16 has float32's range
and needs no scaler. float16 on the CPU is refused: CPU kernels gain nothing from it and some have none.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

import torch

from .errors import ConfigError

__all__ = ["resolve", "check_name", "check_dtype", "DTYPES", "Precision", "DEVICE_FORMS"]

DEVICE_FORMS = "'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"
_FORM = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
#: the ``dtype`` setting's names → torch dtypes
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def check_name(name: str | torch.device) -> str:
    """The device name as text, or a ConfigError naming ``device`` and the allowed forms (no availability check)."""
    text = str(name) if isinstance(name, torch.device) else name
    if not isinstance(text, str) or _FORM.fullmatch(text) is None:
        raise ConfigError(f"train: device={name!r} is invalid; device must be one of {DEVICE_FORMS}")
    return text


def resolve(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else MPS when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
    ``"mps"`` → that device, if this machine has it. A bad name or a missing device is a :class:`ConfigError`."""
    text = check_name(name)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train: device={text!r} but CUDA is not available here; use device='auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train: device={text!r} but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s): the index must be in [0, {torch.cuda.device_count() - 1}]")
    if dev.type == "mps" and not _mps_available():
        raise ConfigError(f"train: device={text!r} but Apple MPS is not available here; use device='auto' or 'cpu'")
    return dev


def check_dtype(device: torch.device, dtype: str) -> None:
    """A ConfigError for a dtype name outside :data:`DTYPES`, or float16 on the CPU."""
    if dtype not in DTYPES:
        raise ConfigError(f"train: dtype={dtype!r} is invalid; dtype must be one of {', '.join(map(repr, DTYPES))}")
    if dtype == "float16" and device.type == "cpu":
        raise ConfigError("train: dtype='float16' is not supported on the CPU (device resolved to cpu); use "
                          "dtype='bfloat16' for mixed precision on the CPU, or 'float32'")


class Precision:
    """The loop's precision on ``device``: ``autocast()`` around the forward and the loss, ``backward(loss)``
    (scaled for float16), ``unscale()`` before gradients are read, and ``attach(optimizer)`` / ``end_step()`` so
    that float16 skips an overflowed step and updates the scale.

    The recipe owns ``optimizer.step()`` (:mod:`workbench.recipes`), so for float16 :meth:`attach` routes that call
    through ``GradScaler.step``, which skips it when the unscaled gradients hold an inf or a NaN.
    """

    def __init__(self, device: torch.device, dtype: str = "float32"):
        check_dtype(device, dtype)
        self.device, self.name, self.dtype = device, dtype, DTYPES[dtype]
        self.scaler = torch.amp.GradScaler(device.type) if dtype == "float16" else None
        self.optimizer: torch.optim.Optimizer | None = None
        self._unscaled = False
        self.skipped_steps = 0

    @property
    def enabled(self) -> bool:
        return self.dtype is not torch.float32

    def autocast(self):
        """``torch.autocast(device_type, dtype)`` for bfloat16/float16; a no-op for float32."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """float16: make ``optimizer.step()`` go through ``GradScaler.step`` (which calls the real step unless the
        gradients overflowed). The re-entry guard lets the scaler's own call reach the original method."""
        self.optimizer = optimizer
        if self.scaler is None:
            return
        inner: Callable = optimizer.step
        scaler, busy = self.scaler, [False]

        def step(*args, **kwargs):
            if busy[0]:
                return inner(*args, **kwargs)
            busy[0] = True
            try:
                self.unscale()
                return scaler.step(optimizer, *args, **kwargs)
            finally:
                busy[0] = False

        optimizer.step = step

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, with float16's loss scale S applied. A second backward in one step (a
        perturb-then-step recipe) is refused under float16: its gradients would need a second unscale."""
        if self.scaler is None:
            loss.backward()
            return
        if self._unscaled:
            raise ConfigError("train: dtype='float16' (loss scaling) supports recipes that take one backward per "
                              "step; this recipe evaluates the loss again after the gradients were unscaled; use "
                              "dtype='bfloat16' (no scaler) with it")
        self.scaler.scale(loss).backward()

    def unscale(self) -> None:
        """Divide the gradients by S (once per step): clipping and gradient probes then read true gradients."""
        if self.scaler is not None and not self._unscaled and self.optimizer is not None:
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True

    def end_step(self) -> None:
        """After the optimizer step: float16 updates S (halved after an overflow, grown after a clean stretch)."""
        if self.scaler is None:
            return
        if self._unscaled:
            before = self.scaler.get_scale()
            self.scaler.update()
            if self.scaler.get_scale() < before:  # the scale shrinks only when the step was skipped
                self.skipped_steps += 1
        self._unscaled = False

    def summary(self) -> dict:
        """What the run records about its precision."""
        out = {"dtype": self.name}
        if self.scaler is not None:
            out.update({"grad_scale": float(self.scaler.get_scale()), "skipped_steps": self.skipped_steps})
        return out
