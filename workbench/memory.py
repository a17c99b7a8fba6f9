"""Byte estimates before allocating: a task or an adaptation that would not fit is refused, not attempted.

A user can ask for ``dim=1024, n_train=10⁶`` (8 GB per tensor) or ``vera`` with ``r=10⁹`` (256 GB) through
options that each lie inside their declared range. Everything that allocates in proportion to its options is
estimated first and refused above :func:`memory_limit` with a :class:`ConfigError` naming the fields, their values
and the estimate:

* tasks declare ``estimate_bytes(kind, options)`` (a classmethod, from the options alone, nothing built);
* adaptations are estimated generically (:func:`adaptation_bytes`): the variant's layers are built on PyTorch's
  ``meta`` device, which records shapes without allocating, and their parameters and buffers are counted. No
  per-variant code; a variant whose construction needs real values (``.item()``, NumPy: LoCA's DCT basis, QWHA's
  allocation, Uni-LoRA's slot assignment) declares ``estimate_bytes(cfg, shapes)`` (a classmethod, from the
  config and shapes alone) instead; one with neither gives no estimate and is built as before.

Measured, not estimated: :class:`PeakTracker` counts the tensor storage a block of code allocates on the CPU (a
``TorchDispatchMode`` that adds every new storage an operator returns and subtracts it when the storage is freed,
autograd's saved tensors and the backward pass included), and :func:`storage_bytes` the storage a set of tensors
holds. ``train()`` reports ``peak_memory_mb`` from them on the CPU (process RSS, which it read before, keeps every
earlier allocation of the process: a run after a freed 1.6 GB tensor read 1,942 MB instead of 411) and from
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` on CUDA.

The limit is 2 GiB unless ``WORKBENCH_MEMORY_LIMIT`` says otherwise (bytes, or with a unit: ``8GiB``, ``500MB``).
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["memory_limit", "check_bytes", "format_bytes", "adaptation_bytes", "check_adaptation", "tensor_bytes",
           "object_bytes", "storage_bytes", "PeakTracker", "DEFAULT_LIMIT", "LIMIT_ENV"]

LIMIT_ENV = "WORKBENCH_MEMORY_LIMIT"
DEFAULT_LIMIT = 2 * 1024**3
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def memory_limit() -> int:
    """The most bytes one task or adaptation may ask for: ``$WORKBENCH_MEMORY_LIMIT`` or 2 GiB."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_LIMIT
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([A-Za-z]*)", text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"{LIMIT_ENV}={text!r} is invalid; give bytes, e.g. 4GiB or 500MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def check_bytes(owner: str, estimate: float, fields: dict[str, Any], what: str = "this") -> None:
    """Refuse ``estimate`` bytes above the limit with a message naming ``fields`` (name → value)."""
    limit = memory_limit()
    if estimate > limit:
        named = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        raise ConfigError(f"{owner}: {named} needs about {format_bytes(estimate)} for {what}, more than the "
                          f"{format_bytes(limit)} allowed; choose smaller values or raise the limit with "
                          f"{LIMIT_ENV} (e.g. {LIMIT_ENV}=8GiB)")


def tensor_bytes(tensors: Iterable[torch.Tensor], skip: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of distinct tensors (by identity), leaving out ``skip``."""
    skipped = {id(t) for t in skip}
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if id(t) in seen or id(t) in skipped:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _module_tensors(module: nn.Module | None) -> list[torch.Tensor]:
    return [] if module is None else list(module.parameters()) + list(module.buffers())


def adaptation_bytes(variant_cls, cfg, shapes: dict[str, tuple[int, int]], seed: int = 0) -> int | None:
    """Bytes of the parameters and buffers ``variant_cls``'s layers would hold on target ``shapes``, from a
    construction on the ``meta`` device (nothing allocated). Layers of one shape are built once and counted per
    layer. A variant that declares its own ``estimate_bytes(cfg, shapes)`` classmethod answers instead, and first:
    one that reads values while initialising cannot be built on ``meta``, and may allocate in NumPy before it fails
    there (Uni-LoRA's slots, QWHA's Hadamard matrix). With neither, None."""
    own = getattr(variant_cls, "estimate_bytes", None)
    if own is not None:  # the variant's own count, first: its meta build may allocate in NumPy before failing
        return int(own(cfg, shapes))
    try:
        with torch.device("meta"):
            shared = variant_cls.SharedModule(cfg, shapes, seed) if variant_cls.SharedModule is not None else None
            shared_tensors = _module_tensors(shared)
            total = tensor_bytes(shared_tensors)
            per_shape: dict[tuple[int, int], int] = {}
            for name, (out_f, in_f) in shapes.items():
                if (out_f, in_f) not in per_shape:
                    base = nn.Linear(in_f, out_f)
                    layer = variant_cls.Layer(base, cfg, shared=shared, name=name)
                    per_shape[(out_f, in_f)] = tensor_bytes(_module_tensors(layer),
                                                            skip=_module_tensors(base) + shared_tensors)
                total += per_shape[(out_f, in_f)]
    except Exception:  # noqa: BLE001 - a construction that needs real values and no estimate: none
        return None  # (the real build, and its own errors, follow)
    return total


def check_adaptation(variant_cls, cfg, shapes: dict[str, tuple[int, int]], seed: int = 0) -> int | None:
    """Estimate an adaptation (:func:`adaptation_bytes`) and refuse it above the limit, naming the config fields
    that differ from their defaults (those that make it large) and the estimate. Returns the estimate."""
    estimate = adaptation_bytes(variant_cls, cfg, shapes, seed)
    if estimate is not None and estimate > memory_limit():
        defaults = {f["name"]: f["default"] for f in cfg.fields_info()}
        changed = {k: getattr(cfg, k) for k in defaults if getattr(cfg, k) != defaults[k]}
        largest = max(shapes.values(), key=lambda s: s[0] * s[1])
        check_bytes(getattr(variant_cls, "name", "variant"), estimate, changed or cfg.to_dict(),
                    f"its adapter on {len(shapes)} layer(s) up to {largest[0]}x{largest[1]}")
    return estimate


def object_bytes(obj: Any, _depth: int = 0) -> int:
    """Bytes of the tensors an object holds in its attributes, dicts, lists and modules (a task's data and
    weights), for caches bounded by bytes. Shared tensors are counted once per call."""
    seen: set[int] = set()

    def walk(x: Any, depth: int) -> int:
        if depth > 4 or id(x) in seen:
            return 0
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, nn.Module):
            return sum(walk(t, depth + 1) for t in _module_tensors(x))
        if isinstance(x, dict):
            return sum(walk(v, depth + 1) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(walk(v, depth + 1) for v in x)
        if hasattr(x, "__dict__") and not isinstance(x, type):
            return sum(walk(v, depth + 1) for v in vars(x).values())
        return 0

    return walk(obj, _depth)


def storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared tensors counted once; meta tensors and
    ``None`` skipped)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        st = t.untyped_storage()
        key = (str(t.device), st.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += st.nbytes()
    return total


class PeakTracker:
    """The peak of the tensor storage allocated inside a ``with`` block on this thread, above what existed before
    (``peak_bytes``), and what is still alive at its end (``current_bytes``).

    Every operator's new output storages are counted once (a view or an in-place result shares a storage already
    counted) and uncounted when the storage is freed (a ``weakref.finalize`` on it): activations autograd saves stay
    counted until the backward pass frees them, gradients and optimizer state from their allocation on. What torch
    allocates without returning it (an operator's internal workspace) is not seen. A ``TorchDispatchMode`` is
    thread-local, so concurrent runs do not count each other's tensors; it adds a Python call per operator, so the
    training loop tracks one step with it, not all of them."""

    def __init__(self) -> None:
        self.current_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, weakref.finalize] = {}
        self._mode = None

    def _free(self, key: int, nbytes: int) -> None:
        if self._live.pop(key, None) is not None:
            self.current_bytes -= nbytes

    def _add(self, out) -> None:
        from torch.utils._pytree import tree_leaves

        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = id(st)
            if key in self._live:
                continue
            nbytes = st.nbytes()
            self._live[key] = weakref.finalize(st, self._free, key, nbytes)
            self.current_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)

    def __enter__(self) -> PeakTracker:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._add(out)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def pause(self):
        """A context in which allocations are not counted (a probe inside the tracked step); frees still are."""
        import contextlib

        @contextlib.contextmanager
        def paused():
            mode = self._mode
            if mode is None:
                yield
                return
            mode.__exit__(None, None, None)
            try:
                yield
            finally:
                mode.__enter__()

        return paused()

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._mode = None
        for fin in list(self._live.values()):
            fin.detach()  # storages still alive at exit stay counted in current_bytes; stop watching them
        self._live.clear()
