"""``train()``: the one training loop every variant, recipe, probe, notebook and the dashboard go through.

Per step: loss (+ the variant's regularizer) → backward → (probes that read gradients) → the recipe's optimizer
step → the variant's ``on_step`` (proximal steps, rank growth, location updates ...) → (probes that read the
result). Every ``every`` steps the losses are checked for NaN/inf in one device sync; on divergence the adapter
goes back to the last checked good state and the run ends with ``status="diverged"`` instead of raising.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from . import tasks as task_registry
from .adapt import Adaptation, adapt
from .errors import ConfigError
from .probes import ProbeContext, get_probes
from .recipes import get_recipe
from .runs import Run, RunStore, new_run_id
from .variant import get_variant

__all__ = ["train", "TrainingStopped"]


class TrainingStopped(Exception):
    """Raised inside the loop when ``stop()`` turns true; caught, the run ends with ``status="stopped"``."""


@dataclass
class _Settings:
    steps: int
    lr: float
    batch_size: int
    seed: int
    every: int
    eval_every: int
    divergence_factor: float = 1e4


def _check_settings(steps, lr, batch_size, seed, every, eval_every) -> _Settings:
    def need_int(name, value, low):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"train: {name}={value!r} is invalid; {name} must be an integer in [{low}, inf)")

    need_int("steps", steps, 1)
    need_int("batch_size", batch_size, 1)
    need_int("seed", seed, 0)
    need_int("every", every, 1)
    if eval_every is None:
        eval_every = max(every, steps // 5)
    need_int("eval_every", eval_every, 1)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        # NaN passes on purpose: it is a legal float that makes training diverge, reported as such
        if not (isinstance(lr, float) and math.isnan(lr)):
            raise ConfigError(f"train: lr={lr!r} is invalid; lr must be a number in (0, inf)")
    return _Settings(steps, float(lr), batch_size, seed, every, eval_every)


def _device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _progress_bar(total: int, enabled: bool | None, desc: str):
    if enabled is None:
        enabled = sys.stderr.isatty() or "ipykernel" in sys.modules
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: process peak RSS


def train(task, variant, *, steps: int = 200, lr: float = 1e-2, batch_size: int = 32, seed: int = 0,
          recipe: str | None = None, probes: str | Iterable[str] | None = "default", every: int = 10,
          eval_every: int | None = None, store: RunStore | str | None = None,
          callback: Callable[[dict], None] | None = None, device: str = "auto", targets=None,
          weight_decay: float = 0.0, max_grad_norm: float | None = None, progress: bool | None = None,
          stop: Callable[[], bool] | None = None, task_options: dict | None = None,
          divergence_factor: float = 1e4, model: torch.nn.Module | None = None, **config) -> Run:
    """Adapt ``task.model()`` with ``variant`` (its hyper-parameters in ``config``) and train it.

    ``task`` is a Task or a name for ``tasks.get``; ``probes`` run every ``every`` steps; ``callback`` receives
    event dicts (``start``, ``progress`` with new metric rows, ``eval``, ``end``); ``store`` (a RunStore or a
    folder) receives the run as it goes; ``stop()`` returning true ends the run early (``status="stopped"``).
    ``model`` continues from a given model instead of a fresh ``task.model()`` (continual learning: pass the result
    of the previous run's ``adaptation.merge_and_unload()``).
    A loss that is NaN/inf, or above ``divergence_factor`` times the first loss, ends the run with
    ``status="diverged"`` and the adapter reset to its last good state. Deterministic for a seed on a device.
    """
    s = _check_settings(steps, lr, batch_size, seed, every, eval_every)
    if not (isinstance(divergence_factor, (int, float)) and divergence_factor > 1):
        raise ConfigError(f"train: divergence_factor={divergence_factor!r} is invalid; it must be a number in "
                          "(1, inf]")
    s.divergence_factor = float(divergence_factor)
    if isinstance(task, str):
        task = task_registry.get(task, **(task_options or {}))
    vcls = get_variant(variant)
    recipe_name = recipe or vcls.default_recipe
    recipe_cls = get_recipe(recipe_name)
    probe_list = get_probes(probes)
    if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__"):
        store = RunStore(store)
    dev = _device(device)
    emit = callback or (lambda event: None)

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(s.seed)
        model = (task.model() if model is None else model).to(dev)
        ad = adapt(model, vcls, targets or task.targets, seed=s.seed, **config)
        ad.total_steps, ad.lr = s.steps, s.lr  # for schedules and data-driven inits (LoRA-SB's first step)
        run = Run(id=new_run_id(vcls.name, task.name), config={
            "task": task.name, "task_options": task.options() if hasattr(task, "options") else {},
            "variant": vcls.name, "config": ad.config.to_dict(), "targets": ad.targets, "steps": s.steps,
            "lr": s.lr, "batch_size": s.batch_size, "seed": s.seed, "recipe": recipe_name, "every": s.every,
            "weight_decay": weight_decay, "device": str(dev), "probes": [p.name for p in probe_list],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, adaptation=ad)
        if store is not None:
            store.begin(run)
        emit({"type": "start", "run": run})
        _loop(run, task, ad, s, recipe_cls, weight_decay, max_grad_norm, probe_list, store, emit, dev,
              progress, stop)
    return run


def _loop(run: Run, task, ad: Adaptation, s: _Settings, recipe_cls, weight_decay, max_grad_norm, probe_list,
          store: RunStore | None, emit, dev, progress, stop) -> None:
    variant = ad.variant
    batches = (_to(b, dev) for b in task.batches("train", batch_size=s.batch_size, seed=s.seed))
    variant.prepare(ad, task, batches)
    recipe = recipe_cls(ad, s.lr, weight_decay)
    reference = task.reference_delta() if hasattr(task, "reference_delta") else None
    if reference is not None:
        reference = {k: v.to(dev) for k, v in reference.items()}
    states: dict[str, dict] = {p.name: {} for p in probe_list}
    flushed = 0

    def flush() -> None:
        nonlocal flushed
        rows = run._rows[flushed:]
        flushed = len(run._rows)
        if store is not None:
            store.append(run, rows)
        if rows:
            emit({"type": "progress", "run": run, "rows": rows})

    def evaluate(step: int) -> dict:
        result = task.evaluate(ad.model)
        for key, value in result.items():
            run.log(step, "eval", "", key, value)
        emit({"type": "eval", "run": run, "step": step, "result": result})
        return result

    def run_probes(phase: str, step: int, batch) -> None:
        for probe in probe_list:
            ctx = ProbeContext(adaptation=ad, task=task, step=step, batch=batch, reference=reference,
                               state=states[probe.name])
            out = getattr(probe, phase)(ctx)
            if out is None:
                continue
            for module, key, value in out.records:
                run.log(step, probe.name, module, key, value)
            for (module, name), tensor in out.arrays.items():
                run.add_snapshot(step, probe.name, module, name, tensor)

    trainable = [p for p in ad.parameters() if p.requires_grad]
    last_good = _LastGood(trainable)
    init_eval = evaluate(0)
    pending: list[tuple[int, torch.Tensor]] = []
    bar = _progress_bar(s.steps, progress, f"{variant.name} on {task.name}")
    train_seconds = 0.0
    first_loss: float | None = None
    ad.train()
    try:
        for step in range(s.steps):
            if stop is not None and stop():
                raise TrainingStopped
            t0 = time.perf_counter()
            batch = next(batches)
            probe_step = step % s.every == 0 or step == s.steps - 1
            # gradient probes see the first gradient of the step (a perturb-then-step recipe calls the closure
            # more than once); their time is not training time
            probe_pending, probe_seconds = probe_step, 0.0

            def closure(batch=batch, step=step, trainable=trainable) -> torch.Tensor:  # this step's, bound now
                nonlocal probe_pending, probe_seconds
                recipe.optimizer.zero_grad(set_to_none=True)
                loss = task.loss(ad.model, batch)
                reg = variant.regularizer(ad)
                (loss if reg is None else loss + reg).backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                if probe_pending:
                    probe_pending, started = False, time.perf_counter()
                    run_probes("before_step", step, batch)
                    probe_seconds += time.perf_counter() - started
                return loss

            loss = recipe.step(closure)
            variant.on_step(ad, step, recipe.optimizer)
            pending.append((step, loss.detach()))
            train_seconds += time.perf_counter() - t0 - probe_seconds
            bar.update(1)
            if probe_step:
                values = torch.stack([v for _, v in pending]).tolist()  # the one device sync per check
                if first_loss is None:
                    first_loss = max(abs(values[0]), 1e-3) if math.isfinite(values[0]) else 1.0
                limit = s.divergence_factor * first_loss
                bad = next((st for (st, _), v in zip(pending, values) if not math.isfinite(v) or v > limit), None)
                for (st, _), v in zip(pending, values):
                    if bad is not None and st >= bad:
                        break
                    run.log(st, "train", "", "loss", v)
                pending.clear()
                if bad is None and not all(torch.isfinite(p).all() for p in trainable):
                    bad = step + 1  # the step just taken produced non-finite weights
                if bad is not None:
                    run.status = "diverged"
                    run.summary["diverged_at_step"] = bad
                    run.summary["restored_step"] = last_good.restore(trainable, bad)
                    break
                last_good.advance(trainable, step + 1)
                ad.eval()
                run_probes("after_step", step, batch)
                ad.train()
                if (step + 1) % s.eval_every == 0 and step != s.steps - 1:
                    ad.eval()
                    evaluate(step + 1)
                    ad.train()
                flush()
                bar.set_postfix(loss=f"{values[-1]:.4g}")
            trainable = _refresh(trainable, ad)
        else:
            run.status = "completed"
    except TrainingStopped:
        run.status = "stopped"
    except Exception as exc:  # noqa: BLE001 - reported on the run and re-raised for the caller
        run.status = "failed"
        run.summary["error"] = f"{type(exc).__name__}: {exc}"
        _finish(run, ad, task, store, emit, train_seconds, init_eval, dev, bar, evaluate_final=False)
        raise
    _finish(run, ad, task, store, emit, train_seconds, init_eval, dev, bar,
            evaluate_final=True, steps_done=_steps_done(run, s))


def _steps_done(run: Run, s: _Settings) -> int:
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


def _finish(run: Run, ad: Adaptation, task, store, emit, train_seconds, init_eval, dev, bar, *,
            evaluate_final: bool, steps_done: int = 0) -> None:
    bar.close()
    ad.eval()
    final = {}
    if evaluate_final:
        final = task.evaluate(ad.model)
        last = int(run.metrics.step.max()) + 1 if len(run.metrics) else 0
        for key, value in final.items():
            run.log(max(last, steps_done), "eval", "", key, value)
    metric = getattr(task, "metric", "loss")
    run.summary.update({
        "status": run.status, "steps_done": steps_done, "trainable_params": ad.num_trainable(),
        "seconds_per_step": train_seconds / max(steps_done, 1), "peak_memory_mb": _peak_memory_mb(dev),
        "init_loss": init_eval.get("loss"), "final_loss": final.get("loss"), "metric": metric,
        "metric_value": final.get(metric), "init_metric_value": init_eval.get(metric),
        "higher_is_better": getattr(task, "higher_is_better", False)})
    if store is not None:
        store.save(run)
    emit({"type": "end", "run": run})
