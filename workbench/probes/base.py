"""The probe interface."""

from __future__ import annotations

import contextlib
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
