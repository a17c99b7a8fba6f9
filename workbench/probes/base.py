"""The probe interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


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
