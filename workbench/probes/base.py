"""The probe interface."""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .. import rng


@dataclass
class ProbeContext:
    adaptation: Any                     # workbench.adapt.Adaptation
    task: Any | None = None             # for probes that need a loss
    step: int = 0
    batch: Any = None                   # the current training batch, on the model's device
    reference: dict[str, torch.Tensor] | None = None   # the true ΔW per module, where known
    state: dict = field(default_factory=dict)          # this probe's scratch space for the whole run
    loop: Any = None   # the loop's StepContext (total_steps, lr, optimizer) inside train(); None when run standalone


@dataclass
class ProbeResult:
    records: list[tuple[str, str, float]] = field(default_factory=list)           # (module, key, value)
    arrays: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)      # (module, name) -> tensor

    def add(self, module: str, key: str, value) -> None:
        self.records.append((module, key, float(value)))

    def record(self, run, step: int, probe: str) -> None:
        """Write this result into ``run`` (metrics rows and snapshots): the one place both training loops, ours and
        the HF Trainer's callback, turn a probe's output into a run's records."""
        for module, key, value in self.records:
            run.log(step, probe, module, key, value)
        for (module, name), tensor in self.arrays.items():
            run.add_snapshot(step, probe, module, name, tensor)


class Probe:
    name: ClassVar[str] = "?"
    default: ClassVar[bool] = True

    def before_step(self, ctx: ProbeContext) -> ProbeResult | None:
        return None

    def after_step(self, ctx: ProbeContext) -> ProbeResult | None:
        return None


def cuda_devices(*modules: torch.nn.Module) -> list[int]:
    """Indices of the CUDA devices that hold any parameter or buffer of ``modules`` (for ``fork_rng``)."""
    found = set()
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            if t.device.type == "cuda":
                found.add(t.device.index if t.device.index is not None else torch.cuda.current_device())
    return sorted(found)


def isolated_rng(*modules: torch.nn.Module):
    """A context in which random numbers (dropout masks, sampled noise) do not advance the run's generators: the CPU
    generator and that of every CUDA device holding ``modules`` are saved on entry and restored on exit
    (``torch.random.fork_rng``), and so are the run's own streams (``workbench.rng.fork``), which dropout masks and
    sampled gates draw from. A probe that runs a forward pass of its own must run it inside this, so that a run with
    the probe and one without it draw the same random numbers (``tests/test_probes_faithfulness.py``)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=cuda_devices(*modules)))
    stack.enter_context(rng.fork())
    return stack


@contextlib.contextmanager
def preserved_modes(*modules: torch.nn.Module):
    """Restore every submodule's ``training`` flag on exit, one by one (``model.train(flag)`` on the root would set
    them all alike: an adapter in training mode inside a model kept in eval mode would lose its dropout)."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class Cache:
    """Values computed from tensors that do not change during a run (the frozen W0's SVD, the reference ΔW*'s),
    computed once and reused: an entry is keyed by a name (module and what) and remembers the *fingerprint* of the
    tensor it came from: a weak reference to its owner (the layer, or the tensor itself), ``data_ptr``,
    ``_version`` (bumped by every in-place write, so ``merge()`` or a ``copy_`` invalidates it), shape, dtype and
    device. A hit needs every part to match, so a new adaptation, a re-based or merged layer or another reference
    recomputes; nothing is ever returned for a tensor it was not computed from."""

    def __init__(self) -> None:
        self._entries: dict = {}

    @staticmethod
    def fingerprint(tensor: torch.Tensor) -> tuple:
        return (tensor.data_ptr(), tensor._version, tuple(tensor.shape), tensor.dtype, str(tensor.device))

    def get(self, key, owner: Any, tensor: torch.Tensor, compute):
        """``compute()`` once per (``key``, ``owner``, state of ``tensor``); the stored value afterwards."""
        fp = self.fingerprint(tensor)
        hit = self._entries.get(key)
        if hit is not None and hit[0]() is owner and hit[1] == fp:
            return hit[2]
        value = compute()
        self._entries[key] = (weakref.ref(owner), fp, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)


def probe_cache(probe: Probe) -> Cache:
    """The :class:`Cache` of one probe instance (made on first use)."""
    cache = probe.__dict__.get("_cache")
    if cache is None:
        cache = probe.__dict__["_cache"] = Cache()
    return cache

