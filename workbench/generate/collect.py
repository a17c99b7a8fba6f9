"""Checkpoint collection for ICM-LoRA: train one LoRA per condition and keep the last few checkpoints of each run.

Shao et al. (IJCAI 2025, §3.1 and the released ``train_lora/train_lora_arg.py``) train one LoRA per task and save the
adapter every epoch of the second half of training, so each task gives ~100 nearby points of its LoRA; the generator
learns from all of them. Here a *family* of tasks is one task name whose option ``condition`` (``t`` for
``synthetic-family:path``, ``angle`` for ``digits-family:rotate``: what the task class declares) varies;
:func:`collect` trains at each value with :func:`workbench.train.train` and records the adapter state at the last
``keep`` checks of the run (every ``every`` steps: the "epochs" of a run that is counted in steps).

Every run of a collection uses the same training seed, so every LoRA starts from the same A (B = 0): a LoRA's
factors are only defined up to B A = (B R)(R⁻¹ A), and a shared start keeps the factors of neighbouring conditions
near each other, which a generator of factors needs. The paper does not say how its runs were seeded.

With a ``store``, every checkpoint is an ordinary run there: the run ``train()`` made holds the final checkpoint,
the earlier ones are saved as runs of their own (config ``checkpoint = {"of": id, "step": s}``), and all carry
``config["collection"] = {"name", "condition", "value", "step"}``, so :func:`load_collection` can read them back and
the dashboard lists them like any run.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import tasks as task_registry
from ..adapt import adapt
from ..budget import saved_numbers
from ..errors import ConfigError
from ..events import Progress
from ..runs import Run, RunStore, new_run_id
from ..train import train

__all__ = ["Checkpoint", "Collection", "collect", "load_collection"]


@dataclass
class Checkpoint:
    """One collected adapter: its condition value, the step it was taken after and its ``adapter_state()``."""

    condition: float
    step: int
    state: dict[str, torch.Tensor]
    run_id: str = ""


@dataclass
class Collection:
    """The checkpoints of one family: task name, the condition option, the other task options and the LoRA setup
    (variant, config, targets, seed) that every run shares."""

    task: str
    condition: str
    task_options: dict[str, Any]
    variant: str
    config: dict[str, Any]
    targets: list[str]
    seed: int
    checkpoints: list[Checkpoint] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)  # the runs train() returned (final checkpoints), in memory only
    name: str = "collection"

    def conditions(self) -> list[float]:
        return sorted({c.condition for c in self.checkpoints})

    def range(self) -> tuple[float, float]:
        values = self.conditions()
        if not values:
            raise ConfigError("the collection holds no checkpoints")
        return values[0], values[-1]

    def final(self, value: float) -> Checkpoint:
        """The last checkpoint at condition ``value`` (the run's trained LoRA)."""
        hits = [c for c in self.checkpoints if c.condition == value]
        if not hits:
            raise ConfigError(f"{self.name}: no checkpoint at {self.condition}={value:g}; collected at "
                              f"{', '.join(f'{v:g}' for v in self.conditions())}")
        return max(hits, key=lambda c: c.step)

    def neighbours(self, value: float) -> tuple[float, float]:
        """The collected conditions just below and above ``value`` (equal at an end or at a collected value)."""
        values = self.conditions()
        i = bisect.bisect_left(values, value)
        if i < len(values) and values[i] == value:
            return value, value
        return values[max(i - 1, 0)], values[min(i, len(values) - 1)]

    def task_at(self, value: float):
        """The family's task at condition ``value``."""
        return task_registry.get(self.task, **{**self.task_options, self.condition: value})

    def adaptation(self, model: torch.nn.Module, state: dict[str, torch.Tensor]):
        """``adapt()`` ``model`` like every run of the collection and load ``state`` (a checkpoint's, or made by
        interpolating or generating one)."""
        ad = adapt(model, self.variant, self.targets, seed=self.seed, **self.config)
        for n, layer in ad.named_layers():
            prefix = n + "."
            layer.load_adapter_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        return ad

    def stored_numbers(self) -> int:
        """The numbers it takes to store every checkpoint (what a generator replaces)."""
        return sum(sum(v.numel() for v in c.state.values()) for c in self.checkpoints)


class _Keep:
    """A train() callback that copies the adapter state at each check, keeping the last ``keep``."""

    def __init__(self, keep: int):
        self.states: deque[tuple[int, dict[str, torch.Tensor]]] = deque(maxlen=keep)

    def __call__(self, event) -> None:
        if not isinstance(event, Progress):
            return
        steps = [r[0] for r in event.rows if r[1] == "train" and r[3] == "loss"]
        if not steps:
            return
        state = {k: v.detach().to("cpu", copy=True) for k, v in event.run.adaptation.adapter_state().items()}
        self.states.append((max(steps) + 1, state))  # the check runs after the step's update


def collect(task: str, values, *, condition: str | None = None, variant: str = "lora", keep: int = 4, seed: int = 0,
            store: RunStore | str | None = None, task_options: dict | None = None, name: str = "collection",
            **train_kw: Any) -> Collection:
    """Train ``variant`` on ``task`` at each condition in ``values`` and keep the last ``keep`` checkpoints per run.

    Args:
        task: a task name whose option ``condition`` moves along the family (``"synthetic-family:path"``,
            ``"digits-family:rotate"``).
        condition: the option that varies; by default the one the task class declares as its ``condition``
            attribute (``angle`` for ``digits-family:rotate``), else ``t``.
        values: the condition values to train at.
        keep: checkpoints per run, taken at the run's last ``keep`` checks (``every`` steps apart; the last is the
            final adapter).
        seed: the training seed of every run (the same start for every condition, see the module docstring).
        store: a RunStore (or folder) that receives every checkpoint as a run.
        train_kw: settings and config for :func:`workbench.train` (``steps``, ``lr``, ``every``, ``r``, ...).

    Returns:
        The :class:`Collection`.

    Raises:
        ConfigError: a bad ``keep``, an empty ``values``, or whatever ``train`` refuses.
    """
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ConfigError(f"collect: keep={keep!r} is invalid; keep must be an integer in [1, inf)")
    values = sorted({float(v) for v in values})
    if not values:
        raise ConfigError("collect: values is empty; give at least one condition value")
    if condition is None:
        condition = getattr(task_registry.task_class(task), "condition", "t")
    if isinstance(store, str) or hasattr(store, "__fspath__"):
        store = RunStore(store)
    task_options = dict(task_options or {})
    task_options.pop(condition, None)
    train_kw.setdefault("probes", None)
    out = None
    for value in values:
        t = task_registry.get(task, **{**task_options, condition: value})
        keeper = _Keep(keep)
        run = train(t, variant, seed=seed, store=store, callback=keeper, progress=False, **train_kw)
        if run.status != "completed":
            raise ConfigError(f"collect: the run at {condition}={value:g} ended {run.status!r}; lower lr or steps")
        if out is None:
            out = Collection(task=task, condition=condition, task_options=task_options, variant=run.variant,
                             config=dict(run.config["config"]), targets=list(run.config["targets"]), seed=seed,
                             name=name)
        out.runs.append(run)
        final_step = run.summary.get("steps_done", 0)
        for step, state in keeper.states:
            ck = Checkpoint(condition=value, step=step, state=state, run_id=run.id)
            if step < final_step and store is not None:
                ck.run_id = _store_checkpoint(store, run, t, out, step, state)
            out.checkpoints.append(ck)
        run.config["collection"] = {"name": name, "condition": condition, "value": value, "step": final_step}
        if store is not None:
            store.save(run)
    return out


def _store_checkpoint(store: RunStore, run: Run, task, col: Collection, step: int, state) -> str:
    """Save an intermediate checkpoint as a run of its own (evaluated, so the Runs list shows its metric)."""
    ad = col.adaptation(task.model(), state)
    ad.eval()
    result = task.evaluate(ad.model)
    config = {**run.config, "steps": step, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "checkpoint": {"of": run.id, "step": step},
              "collection": {"name": col.name, "condition": col.condition,
                             "value": run.config["task_options"].get(col.condition), "step": step}}
    ck = Run(id=new_run_id(run.variant, run.task), config=config, status="completed", adaptation=ad)
    for key, value in result.items():
        ck.log(step, "eval", "", key, value)
    metric = getattr(task, "metric", "loss")
    ck.summary = {"status": "completed", "steps_done": step, "trainable_params": ad.num_trainable(),
                  "saved_numbers": saved_numbers(ad), "final_loss": result.get("loss"), "metric": metric,
                  "metric_value": result.get(metric), "higher_is_better": getattr(task, "higher_is_better", False)}
    store.save(ck)
    return ck.id


def load_collection(store: RunStore | str, name: str = "collection") -> Collection:
    """The collection ``name`` read back from the runs of ``store`` (their ``adapter/`` tensors)."""
    from safetensors.torch import load_file

    store = RunStore(store) if not isinstance(store, RunStore) else store
    out = None
    for run_id in store.list().id:
        try:
            run = store.load(run_id)
        except Exception:  # noqa: BLE001 - an unreadable run is not part of any collection
            continue
        info = run.config.get("collection")
        if not info or info.get("name") != name or run.path is None:
            continue
        if out is None:
            opts = {k: v for k, v in run.config.get("task_options", {}).items() if k != info["condition"]}
            out = Collection(task=run.task, condition=info["condition"], task_options=opts, variant=run.variant,
                             config=dict(run.config["config"]), targets=list(run.config["targets"]),
                             seed=int(run.config["seed"]), name=name)
        state = load_file(str(run.path / "adapter" / "adapter.safetensors"))
        out.checkpoints.append(Checkpoint(condition=float(info["value"]), step=int(info["step"]), state=state,
                                          run_id=run.id))
    if out is None:
        raise ConfigError(f"no collection {name!r} in the run store {store.root.name!r}")
    out.checkpoints.sort(key=lambda c: (c.condition, c.step))
    return out
