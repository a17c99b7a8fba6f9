"""``train()``: the one training loop every variant, recipe, probe, notebook and the dashboard go through.

``train()`` resolves the settings (:mod:`workbench.settings`: defaults < task defaults < the variant's preset for the
task < explicit values), adapts a fresh model and hands everything to :class:`Trainer`, whose named steps are the
loop. Per step: the learning-rate schedule → loss (+ the variant's regularizer) → backward → (probes that read
gradients) → the recipe's optimizer step → the variant's ``on_step(ctx)``. At each *check* (every ``every`` steps
for the probes, every ``eval_every`` steps for validation) the losses are synced in one device call and checked for
divergence; on divergence the adapter goes back to the last good state and the run ends ``status="diverged"``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from . import devices, rng
from . import tasks as task_registry
from .adapt import Adaptation, adapt
from .budget import saved_numbers
from .devices import Precision
from .events import End, Eval, Progress, Start, StepContext, TrainControl, TrainEvent
from .memory import PeakTracker, storage_bytes
from .probes import ProbeContext, get_probes
from .probes.schedule import ProbeSchedule
from .recipes import get_recipe, validate_options
from .runs import Run, RunStore, new_run_id
from .settings import TrainSettings, resolve, split_overrides
from .variant import get_variant

__all__ = ["train", "Trainer", "TrainingStopped"]


class TrainingStopped(Exception):
    """Raised inside the loop when the run's :class:`TrainControl` asks to stop; the run ends ``"stopped"``."""


def train(task, variant, *, settings: TrainSettings | dict | None = None, config: dict | None = None,
          probes: str | Iterable[str] | None = "default", targets=None, store: RunStore | str | None = None,
          callback: Callable[[TrainEvent], None] | None = None, control: TrainControl | None = None,
          progress: bool | None = None, task_options: dict | None = None, model: torch.nn.Module | None = None,
          presets: bool = True, recipe_options: dict | None = None, **overrides) -> Run:
    """Adapt ``task.model()`` with ``variant`` and train it; return the :class:`Run`.

    Settings of the loop (:class:`~workbench.settings.TrainSettings`: ``steps``, ``lr``, ``batch_size``, ``seed``,
    ``lr_schedule``, ``every``, ...) go in ``settings=``; the variant's hyper-parameters in ``config=``. Flat keywords
    are sorted into the two by name (``train(task, "lora", steps=300, r=4)``); a name that is both (SoRA's
    ``weight_decay``) must be given through ``settings=`` or ``config=``. Values the caller leaves out come from the
    variant's preset for the task (``presets=False`` turns presets off), then the task's training defaults, then the
    declared defaults; ``run.config["sources"]`` records which.

    ``recipe`` (a setting: ``adamw`` unless the variant names its own) picks the optimizer recipe
    (:mod:`workbench.recipes`); ``recipe_options`` are its declared options, validated before any training
    (``train(task, "lora", recipe="altlora", recipe_options={"mode": "alternate"})``) and recorded in
    ``run.config["recipe_options"]`` with the defaults filled in.

    ``task`` is a Task or a name for ``tasks.get`` (with ``task_options``); ``probes`` run every ``every`` steps;
    ``callback`` receives typed events (:mod:`workbench.events`); ``control.stop()`` ends the run early
    (``status="stopped"``); ``store`` (a RunStore or a folder) receives the run as it goes. ``model`` continues from
    a given model instead of a fresh ``task.model()`` (continual learning: pass the previous run's
    ``adaptation.merge_and_unload()``). Deterministic for a seed on a device.
    """
    if isinstance(task, str):
        task = task_registry.get(task, **(task_options or {}))
    vcls = get_variant(variant)
    flat_settings, flat_config = split_overrides(vcls, overrides)
    explicit = settings.to_dict() if isinstance(settings, TrainSettings) else dict(settings or {})
    resolved = resolve(task, vcls, {**explicit, **flat_settings}, {**(config or {}), **flat_config},
                       use_presets=presets)
    s = resolved.settings
    recipe_name = s.recipe or vcls.default_recipe
    recipe_cls = get_recipe(recipe_name)
    recipe_config = validate_options(recipe_name, recipe_options)  # a bad option fails before anything is built
    probe_list = get_probes(probes)
    if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__"):
        store = RunStore(store)
    dev = devices.resolve(s.device)           # auto: CUDA, then MPS, then the CPU
    precision = Precision(dev, s.dtype)        # float16 on the CPU is refused here, before anything is built
    control = control or TrainControl()

    # the run draws from its own seeded streams (workbench.rng: dropout masks, gates, grown ranks), private to this
    # thread, so a seed gives the same run whatever else trains in the process; the global generator is forked and
    # seeded too, for model code that draws without a generator
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), rng.seeded(s.seed):
        torch.manual_seed(s.seed)
        model = (task.model() if model is None else model).to(dev)
        keep = getattr(task, "trainable_modules", [])
        ad = adapt(model, vcls, targets or task.targets, seed=s.seed, **({"modules_to_save": keep} if keep else {}),
                   **resolved.config)
        run = Run(id=new_run_id(vcls.name, task.name), config={
            "task": task.name, "task_options": task.options() if hasattr(task, "options") else {},
            "variant": vcls.name, "config": ad.config.to_dict(), "targets": ad.targets, "steps": s.steps,
            "lr": s.lr, "batch_size": s.batch_size, "seed": s.seed, "recipe": recipe_name,
            "recipe_options": recipe_config.to_dict(), "every": s.every,
            "weight_decay": s.weight_decay, "device": str(dev), "dtype": s.dtype,
            "probes": [p.name for p in probe_list],
            "settings": s.to_dict(), "sources": resolved.sources,
            "preset": {"task": resolved.preset.task, "reason": resolved.preset.reason} if resolved.preset else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, adaptation=ad)
        if store is not None:
            store.begin(run)
        Trainer(run, task, ad, s, recipe_cls, probe_list, store, callback, control, dev, progress,
                recipe_options=recipe_config.to_dict(), precision=precision).fit()
    return run


class Trainer:
    """The loop as an object with named steps: :meth:`step` (one optimizer update), :meth:`check` (sync the losses,
    detect divergence, run the probes, evaluate, flush), :meth:`finish` (final evaluation and summary)."""

    def __init__(self, run: Run, task, ad: Adaptation, s: TrainSettings, recipe_cls, probe_list, store, callback,
                 control: TrainControl, dev: torch.device, progress: bool | None, recipe_options: dict | None = None,
                 precision: Precision | None = None):
        self.run, self.task, self.ad, self.s, self.dev = run, task, ad, s, dev
        self.precision = precision or Precision(dev, s.dtype)
        self.variant, self.probe_list, self.store, self.control = ad.variant, probe_list, store, control
        self.callback = callback or (lambda event: None)
        pin = dev.type == "cuda"  # page-locked host batches copy to the GPU asynchronously
        self.batches = (_to(b, dev, pin) for b in task.batches("train", batch_size=s.batch_size, seed=s.seed))
        self.ctx = StepContext(adaptation=ad, step=0, total_steps=s.steps, lr=s.lr, task=task, settings=s)
        self.variant.prepare(self.ctx, self.batches)
        self.recipe = recipe_cls(ad, s.lr, s.weight_decay, ctx=self.ctx, **(recipe_options or {}))
        self.ctx.optimizer = self.recipe.optimizer
        self.precision.attach(self.recipe.optimizer)  # float16: the recipe's optimizer.step() goes through the scaler
        reference = task.reference_delta() if hasattr(task, "reference_delta") else None
        self.reference = None if reference is None else {k: v.to(dev) for k, v in reference.items()}
        self.probe_states: dict[str, dict] = {p.name: {} for p in probe_list}
        self.schedule = ProbeSchedule(probe_list, s.probe_budget, sync=self._sync)  # which probes run, by cost
        self.trainable = [p for p in ad.parameters() if p.requires_grad]
        self.last_good = _LastGood(self.trainable)
        self.pending: list[tuple[int, torch.Tensor]] = []   # (step, loss) not yet synced from the device
        self.flushed = 0                                   # metric rows already sent to the store and callback
        self.first_loss: float | None = None
        self.train_seconds = 0.0   # the loop's own time, probes excluded, step 0 (warm-up, memory-tracked) apart
        self.timed_steps = 0
        self.peak_bytes = 0        # the largest training-step peak measured (see _peak_memory_mb)
        self.tracker: PeakTracker | None = None
        self.eval_interval = s.eval_interval()
        self.bar = _progress_bar(s.steps, progress, f"{self.variant.name} on {task.name}")

    # -- events and records ----------------------------------------------------------------------------------
    def emit(self, event_cls, **fields) -> None:
        self.callback(event_cls(run=self.run, control=self.control, **fields))

    def flush(self) -> None:
        rows = self.run._rows[self.flushed:]
        self.flushed = len(self.run._rows)
        if self.store is not None:
            self.store.append(self.run, rows)
        if rows:
            self.emit(Progress, rows=rows)

    def evaluate(self, step: int) -> dict:
        self.ad.eval()
        result = self.task.evaluate(self.ad.model)
        self.ad.train()
        for key, value in result.items():
            self.run.log(step, "eval", "", key, value)
        self.emit(Eval, step=step, result=result)
        return result

    def probe(self, phase: str, step: int, batch) -> None:
        for probe in self.probe_list:
            if not self.schedule.due(probe):
                continue
            pctx = ProbeContext(adaptation=self.ad, task=self.task, step=step, batch=batch, reference=self.reference,
                                state=self.probe_states[probe.name], loop=self.ctx)
            with self.schedule.timed(probe):
                out = getattr(probe, phase)(pctx)
            if out is not None:
                out.record(self.run, step, probe.name)

    def record_recipe(self, step: int) -> None:
        """What the recipe reports at a probe step (ALLoRA's row factors, LoRA-Pro's ‖X‖, ...), as probe ``recipe``."""
        rows, arrays = self.recipe.records()
        for module, key, value in rows:
            self.run.log(step, "recipe", module, key, value)
        for (module, name), tensor in arrays.items():
            self.run.add_snapshot(step, "recipe", module, name, tensor)

    # -- the loop ----------------------------------------------------------------------------------------------
    def fit(self) -> None:
        self.emit(Start)
        self.init_eval = self.evaluate(0)
        self.ad.train()
        if self.dev.type == "cuda":  # this run's peak, not the largest of every earlier run in the process
            torch.cuda.synchronize(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
        try:
            for step in range(self.s.steps):
                if self.control.should_stop:
                    raise TrainingStopped
                probe_step = step % self.s.every == 0 or step == self.s.steps - 1
                if probe_step:
                    self.schedule.plan(step, self.train_seconds + getattr(self, "first_step_seconds", 0.0),
                                       self.s.steps)
                eval_step = (step + 1) % self.eval_interval == 0 and step != self.s.steps - 1
                self.step(step, probe_step)
                if (probe_step or eval_step) and not self.check(step, probe_step, eval_step):
                    break
                self.trainable = _refresh(self.trainable, self.ad)
            else:
                self.run.status = "completed"
        except TrainingStopped:
            self.run.status = "stopped"
        except Exception as exc:  # noqa: BLE001 - reported on the run and re-raised for the caller
            self.run.status = "failed"
            self.run.summary["error"] = f"{type(exc).__name__}: {exc}"
            self.finish(evaluate=False)
            raise
        self.finish(evaluate=True)

    def step(self, step: int, probe_step: bool) -> None:
        """One update. Gradient probes see the step's first gradient (a perturb-then-step recipe calls the closure
        more than once); their time and their memory are not counted as training's (:meth:`_paused`).

        Timing: CUDA is synchronised at both ends of the step and around each probe, so the timer reads the work
        done, not the work queued. Step 0 (lazy optimizer state, warm-up and, on the CPU, the step whose memory is
        tracked) is timed apart: ``seconds_per_step`` is the mean over the later steps when there are any."""
        self._sync()
        t0 = time.perf_counter()
        batch = next(self.batches)
        lr = self._schedule(step)
        self.ctx.step, self.ctx.lr, self.ctx.batch = step, lr, batch
        probe_pending, probe_seconds = probe_step, 0.0

        def closure() -> torch.Tensor:
            nonlocal probe_pending, probe_seconds
            self.recipe.optimizer.zero_grad(set_to_none=True)
            with self.precision.autocast():  # the forward and the loss in the run's dtype; weights stay float32
                loss = self.task.loss(self.ad.model, batch)
                reg = self.variant.regularizer(self.ctx)
            self.precision.backward(loss if reg is None else loss + reg)
            self.precision.unscale()  # float16: true gradients from here on (probes, clipping)
            loss = loss.float()
            first = probe_pending
            if first:  # before clipping: a gradient probe records the gradient the loss produced
                probe_pending = False
                with self._paused() as timer:
                    self.probe("before_step", step, batch)
                probe_seconds += timer.seconds
            if self.s.max_grad_norm is not None:
                total = torch.nn.utils.clip_grad_norm_(self.trainable, self.s.max_grad_norm)
                if first:  # the norm the clip saw, at probe steps (one sync each)
                    self.run.log(step, "train", "", "grad_norm_before_clip", total)
            return loss

        with self._memory(step):
            loss = self.recipe.step(closure)
            self.precision.end_step()
            self.variant.on_step(self.ctx)
        self.pending.append((step, loss.detach()))
        self._sync()
        seconds = time.perf_counter() - t0 - probe_seconds
        if step == 0:
            self.first_step_seconds = seconds
        else:
            self.train_seconds += seconds
            self.timed_steps += 1
        self.bar.update(1)

    # -- honest accounting -------------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    @contextlib.contextmanager
    def _memory(self, step: int):
        """Measure the step's peak memory. CUDA: every step, from ``max_memory_allocated`` (reset at the run's
        start and after every probe or evaluation, which :meth:`_paused` leaves out). CPU: step 0, as the storage
        the run holds when it begins (model, adapter, optimizer state, last good copy, batch: :func:`storage_bytes`)
        plus the peak of what the step allocates (:class:`~workbench.memory.PeakTracker`), not process RSS."""
        if self.dev.type == "cuda":
            yield
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.dev))
            return
        if step != 0:
            yield
            return
        held = storage_bytes([*self.ad.model.parameters(), *self.ad.model.buffers(), *self.ad.parameters(),
                              *self.ad.buffers(), *self.last_good.validated, *self.last_good.candidate,
                              *_state_tensors(self.recipe.optimizer), *_batch_tensors(self.ctx.batch)])
        self.tracker = PeakTracker()
        try:
            with self.tracker:
                yield
        finally:
            self.peak_bytes = max(self.peak_bytes, held + self.tracker.peak_bytes)
            self.tracker = None

    @contextlib.contextmanager
    def _paused(self):
        """A probe's (or evaluation's) stretch inside or between steps: synchronised and timed (``.seconds``), its
        allocations kept out of the run's peak memory."""
        timer = _Timer()
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.dev))
        started = time.perf_counter()
        try:
            with self.tracker.pause() if self.tracker is not None else contextlib.nullcontext():
                yield timer
        finally:
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
                torch.cuda.reset_peak_memory_stats(self.dev)
            timer.seconds = time.perf_counter() - started

    def _schedule(self, step: int) -> float:
        """Set every scheduled group's rate for this step (a group a variant manages itself sets
        ``"scheduled": False``); returns the base rate after the schedule."""
        factor = self.s.lr_factor(step)
        for group in self.recipe.optimizer.param_groups:
            if group.get("scheduled", True):
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
        return self.s.lr * factor

    def check(self, step: int, probe_step: bool, eval_step: bool) -> bool:
        """Sync and log the pending losses; on divergence restore the last good state and return False."""
        values = torch.stack([v for _, v in self.pending]).tolist()  # the one device sync per check
        if self.first_loss is None:
            self.first_loss = max(abs(values[0]), 1e-3) if math.isfinite(values[0]) else 1.0
        bad = self.divergence(values)
        for (st, _), v in zip(self.pending, values):
            if bad is not None and st >= bad:
                break
            self.run.log(st, "train", "", "loss", v)
        self.pending.clear()
        if bad is None and not all(torch.isfinite(p).all() for p in self.trainable):
            bad = step + 1  # the step just taken produced non-finite weights
        if bad is not None:
            self.run.status = "diverged"
            self.run.summary["diverged_at_step"] = bad
            self.run.summary["restored_step"] = self.last_good.restore(self.trainable, bad)
            return False
        self.last_good.advance(self.trainable, step + 1)
        if probe_step:
            with self._paused():
                self.ad.eval()
                self.probe("after_step", step, self.ctx.batch)
                self.ad.train()
                self.record_recipe(step)
        if eval_step:
            with self._paused():
                self.evaluate(step + 1)
        self.flush()
        self.bar.set_postfix(loss=f"{values[-1]:.4g}")
        return True

    def _seconds_per_step(self) -> float:
        """Mean seconds of a training step, probes and evaluations excluded: over the steps after step 0 when
        there are any, else step 0's own time."""
        if self.timed_steps:
            return self.train_seconds / self.timed_steps
        return getattr(self, "first_step_seconds", 0.0)

    def divergence(self, values: list[float]) -> int | None:
        """The first pending step whose loss is NaN/inf or above ``divergence_factor`` × the first loss."""
        limit = self.s.divergence_factor * self.first_loss
        return next((st for (st, _), v in zip(self.pending, values) if not math.isfinite(v) or v > limit), None)

    def finish(self, *, evaluate: bool) -> None:
        run, ad = self.run, self.ad
        self.bar.close()
        self.recipe.close()  # hooks and patched branches leave the layers: the trained adapter is plain again
        ad.eval()
        steps_done = _steps_done(run) if evaluate else 0
        final = {}
        if evaluate:
            final = self.task.evaluate(ad.model)
            last = int(run.metrics.step.max()) + 1 if len(run.metrics) else 0
            for key, value in final.items():
                run.log(max(last, steps_done), "eval", "", key, value)
        init_eval = getattr(self, "init_eval", {})
        metric = getattr(self.task, "metric", "loss")
        run.summary.update({
            "status": run.status, "steps_done": steps_done, "trainable_params": ad.num_trainable(),
            "saved_numbers": saved_numbers(ad),
            "seconds_per_step": self._seconds_per_step(), "peak_memory_mb": _peak_memory_mb(self.peak_bytes),
            "init_loss": init_eval.get("loss"), "final_loss": final.get("loss"), "metric": metric,
            "metric_value": final.get(metric), "init_metric_value": init_eval.get(metric),
            "higher_is_better": getattr(self.task, "higher_is_better", False), **self.schedule.summary(),
            "device": str(self.dev), **self.precision.summary()})
        if self.store is not None:
            self.store.save(run)
        self.emit(End)


# ------------------------------------------------------------------------------------------------- helpers


def _progress_bar(total: int, enabled: bool | None, desc: str):
    if enabled is None:
        enabled = sys.stderr.isatty() or "ipykernel" in sys.modules
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _to(batch: Any, device: torch.device, pin: bool = False) -> Any:
    """``batch`` on ``device``; with ``pin`` a CPU tensor is page-locked first, so the copy to the GPU is
    asynchronous (``non_blocking`` only overlaps from pinned memory)."""
    if isinstance(batch, dict):
        return {k: _to(v, device, pin) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device, pin) for v in batch)
    if not isinstance(batch, torch.Tensor):
        return batch
    if pin and batch.device.type == "cpu" and not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def _peak_memory_mb(peak_bytes: int) -> float:
    """The run's measured training-step peak (:meth:`Trainer._memory`) in MiB."""
    return peak_bytes / 2**20


class _Timer:
    seconds = 0.0


def _state_tensors(optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def _batch_tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        return [t for v in batch.values() for t in _batch_tensors(v)]
    if isinstance(batch, (list, tuple)):
        return [t for v in batch for t in _batch_tensors(v)]
    return []


def _steps_done(run: Run) -> int:
    m = run.metrics
    losses = m[(m.probe == "train") & (m.key == "loss")]
    return int(losses.step.max()) + 1 if len(losses) else 0


class _LastGood:
    """The adapter's last good state, for divergence. Parameters after step t are only known to be good once the
    loss computed from them (at step t+1) is finite, so two copies are kept: ``validated`` and ``candidate``
    (taken at the last check, at ``candidate_step``)."""

    def __init__(self, params: list[torch.Tensor]):
        self.validated = self.candidate = [p.detach().clone() for p in params]
        self.validated_step = self.candidate_step = 0

    def advance(self, params: list[torch.Tensor], step: int) -> None:
        """All losses up to ``step`` were finite: the candidate is validated; take a new one."""
        self.validated, self.validated_step = self.candidate, self.candidate_step
        self.candidate, self.candidate_step = [p.detach().clone() for p in params], step

    def restore(self, params: list[torch.Tensor], bad_step: int) -> int:
        """Put back the newest state whose loss was finite; return the step it belongs to."""
        state, at = ((self.candidate, self.candidate_step) if bad_step > self.candidate_step
                     else (self.validated, self.validated_step))
        with torch.no_grad():
            for p, saved in zip(params, state):
                if p.shape == saved.shape:  # a variant that resized tensors since keeps its new ones
                    p.copy_(saved)
        return at


def _refresh(trainable: list[torch.Tensor], ad: Adaptation) -> list[torch.Tensor]:
    """Variants that grow or prune ranks replace parameters in on_step; keep the list current."""
    current = [p for p in ad.parameters() if p.requires_grad]
    if len(current) != len(trainable) or any(a is not b for a, b in zip(current, trainable)):
        return current
    return trainable
