"""What the training loop tells the outside, and what it hands to every hook.

* :class:`StepContext`: the one argument of every variant hook and probe that needs the loop's state (the step,
  the run's length, the current learning rate, the optimizer, the task, the batch), as HF's ``TrainerState`` and
  Lightning's hooks do. Variants read ``ctx.total_steps`` instead of guessing a run length.
* Events (:class:`Start`, :class:`Progress`, :class:`Eval`, :class:`End`): typed records sent to ``train()``'s
  ``callback``. Each carries the live ``run`` and the run's :class:`TrainControl`.
* :class:`TrainControl`: ``control.stop()`` ends the run after the current step with ``status="stopped"``; safe to
  call from another thread (a dashboard's Stop button) or from inside a callback.
* :class:`Callback`: an optional base class whose ``on_start``/``on_progress``/``on_eval``/``on_end`` methods are
  called by event type; any plain function of one event works as well.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .adapt import Adaptation
    from .runs import Run
    from .settings import TrainSettings

__all__ = ["StepContext", "TrainControl", "TrainEvent", "Start", "Progress", "Eval", "End", "Callback"]


@dataclass
class StepContext:
    """The loop's state at one step, passed to ``Variant.prepare``/``on_step`` and to recipes.

    ``step`` is 0-based (the step just taken, in ``on_step``); ``total_steps`` the run's length; ``lr`` the base
    rate after the schedule at this step; ``batch`` the step's batch (``None`` before training).
    """

    adaptation: Adaptation
    step: int
    total_steps: int
    lr: float
    optimizer: torch.optim.Optimizer | None = None
    task: Any = None
    batch: Any = None
    settings: TrainSettings | None = None

    @classmethod
    def standalone(cls, adaptation: Adaptation, total_steps: int, lr: float = 1e-3, **kw) -> StepContext:
        """A context for driving hooks outside ``train()`` (tests, custom loops): the run length must be given."""
        return cls(adaptation=adaptation, step=0, total_steps=total_steps, lr=lr, **kw)


class TrainControl:
    """Asks a running ``train()`` to stop; thread-safe."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def should_stop(self) -> bool:
        return self._stop.is_set()


@dataclass
class TrainEvent:
    run: Run
    control: TrainControl
    type: ClassVar[str] = "?"


@dataclass
class Start(TrainEvent):
    """Before the first step: the run, its config and its adaptation exist; nothing is trained yet."""

    type: ClassVar[str] = "start"


@dataclass
class Progress(TrainEvent):
    """New metric rows, ``(step, probe, module, key, value)``, logged since the last event (one per check)."""

    rows: list[tuple] = field(default_factory=list)
    type: ClassVar[str] = "progress"


@dataclass
class Eval(TrainEvent):
    """A validation result at ``step``."""

    step: int = 0
    result: dict[str, float] = field(default_factory=dict)
    type: ClassVar[str] = "eval"


@dataclass
class End(TrainEvent):
    """The run is over (completed, stopped, diverged or failed); ``run.summary`` is final."""

    type: ClassVar[str] = "end"


class Callback:
    """Subclass and override the ``on_*`` methods you need; an instance is a valid ``train(callback=...)``."""

    def __call__(self, event: TrainEvent) -> None:
        getattr(self, f"on_{event.type}")(event)

    def on_start(self, event: Start) -> None: ...

    def on_progress(self, event: Progress) -> None: ...

    def on_eval(self, event: Eval) -> None: ...

    def on_end(self, event: End) -> None: ...
