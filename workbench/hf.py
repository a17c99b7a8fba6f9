"""The workbench probes on a model trained by ``transformers.Trainer``: :class:`ProbeCallback`.

``Trainer(..., callbacks=[ProbeCallback(store="runs")])`` runs the probes of :mod:`workbench.probes` (spectra,
frequency maps, ranks, gradients; ``probes="default"``) every ``every`` optimizer steps and writes a
:class:`~workbench.runs.Run` to a :class:`~workbench.runs.RunStore` as training goes, so the dashboard shows it
live and reads it afterwards. The model may carry

* PEFT LoRA adapters (``get_peft_model(model, LoraConfig(...))``; rsLoRA through PEFT's own scaling): each
  ``lora.Linear`` is read in place through a :class:`PeftLoraView`, which offers what the probes read of a
  :class:`~workbench.variant.VariantLayer` (``update()`` = s·B A, ``update_factors()``, ``pretrained_weight()``, the
  trainable tensors, forward hooks): nothing is copied, so the gradients are the live ones. At the end the adapter
  is saved with PEFT (safetensors) in the run's ``peft/`` folder, for :func:`workbench.peft_import.from_peft`;
* workbench adapters (``wb.adapt``): pass the :class:`~workbench.adapt.Adaptation` itself to the Trainer (its
  ``forward`` is the model's), or the bare model and ``adaptation=ad`` here; the run saves ``adapter/`` as
  ``train()``'s runs do. (Variant hooks such as SoRA's proximal step are ``train()``'s, not the Trainer's: only
  variants without ``on_step``/``regularizer`` train as they would there.)

When things happen, in the Trainer's loop (``transformers.trainer.Trainer._inner_training_loop``): probes'
``before_step`` (gradient norms, the full-weight gradient G) run in ``on_pre_optimizer_step``, i.e. after the
Trainer's gradient clipping (``max_grad_norm``, 1.0 by default: set 0 for the raw gradient; the pre-clip total the
Trainer logs is recorded as ``train``/``grad_norm_before_clip``); ``after_step`` (spectra, maps, ranks, the step's
cosine with −G) in ``on_optimizer_step``, after the update and before the gradients are zeroed, with the model in
eval mode. Probes that need a loss (gradients) take it from the Trainer's own batch of that step, captured by a
forward pre-hook on the model, and compute it as the Trainer does without a custom ``compute_loss``:
``model(**batch).loss``; ``task=`` (anything with ``loss(model, batch)``) replaces that. The training loss of every
step is read from the model's outputs (mean over gradient-accumulation micro-batches) and synced once per probe
step; ``on_evaluate`` metrics go in as ``eval`` rows (``eval_loss`` → ``loss``).

Cost: ``run.summary["probe_seconds"]`` and ``["probe_overhead"]`` (probe time / the rest of the training time).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .events import StepContext
from .probes import ProbeContext, get_probes
from .probes.base import preserved_modes
from .runs import Run, RunStore, new_run_id

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - transformers is a dependency of the text tasks
    raise ImportError("workbench.hf needs the transformers package") from exc

__all__ = ["ProbeCallback", "PeftLoraView", "PeftAdaptation", "peft_adaptation", "TrainerLoss"]

PEFT_PREFIX = "base_model.model."
#: probe every this many steps by default. One probe step of the default probes costs about 1.5-1.8 training steps of
#: MiniLM + LoRA (r=8, q/v) at batch 32 on CPU (the gradient probe's extra forward/backward ~1 step, the SVDs of
#: W0 + ΔW of 12 layers ~0.6): 5.5% of training measured at every=50 over 100 steps (3 probe steps), so ~2% here
DEFAULT_EVERY = 100
_EVAL_SKIP = ("runtime", "samples_per_second", "steps_per_second", "epoch")


# -- PEFT LoRA, read in place ------------------------------------------------------------------------------------
class PeftLoraView(nn.Module):
    """One PEFT ``lora.Linear`` seen as a workbench layer: ΔW = s · B A (Hu et al., 2021, Eq. (3); s =
    ``lora_alpha / r``, or ``/ √r`` with rsLoRA, PEFT's ``scaling``), W0 the frozen base weight. Reads the live
    tensors; holds no parameters of its own (``named_parameters`` names PEFT's ``lora_A``/``lora_B``)."""

    linear_delta = True
    has_weight = True
    frequency_basis = "dct"
    frequency_sides = "both"

    def __init__(self, layer: nn.Module, adapter: str, name: str):
        super().__init__()
        self.__dict__["peft"] = layer  # not a submodule: the view must not re-register PEFT's tensors
        self.adapter, self.name = adapter, name

    @property
    def base(self) -> nn.Module:
        return self.peft.base_layer

    @property
    def in_features(self) -> int:
        return self.peft.in_features

    @property
    def out_features(self) -> int:
        return self.peft.out_features

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.peft.lora_A[self.adapter].weight
        b = self.peft.lora_B[self.adapter].weight
        return b * self.peft.scaling[self.adapter], a

    def delta_weight(self) -> torch.Tensor:
        b, a = self.factors()
        return b @ a

    def update(self) -> torch.Tensor:
        return self.delta_weight()

    def update_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.factors()

    def pretrained_weight(self) -> torch.Tensor:
        """W0 in the (out, in) layout: GPT-2's ``Conv1D`` (``fan_in_fan_out``) stores it transposed; a merged
        adapter is taken back out."""
        w = self.base.weight
        w = w.t() if self.peft.fan_in_fan_out else w
        return w - self.delta_weight().to(w.dtype) if self.peft.merged else w

    def effective_weight(self) -> torch.Tensor:
        return self.pretrained_weight() + self.delta_weight()

    def inspect(self) -> dict[str, torch.Tensor]:
        return {}

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        yield f"{prefix}lora_A", self.peft.lora_A[self.adapter].weight
        yield f"{prefix}lora_B", self.peft.lora_B[self.adapter].weight

    def register_forward_hook(self, hook, *args, **kwargs):
        """The hook sees the PEFT layer's input and output (what ``probes.gradients`` needs for G = Σ g_outᵀ x)."""
        return self.peft.register_forward_hook(lambda module, inputs, output: hook(self, inputs, output),
                                               *args, **kwargs)

    def extra_repr(self) -> str:
        return f"peft lora, in={self.in_features}, out={self.out_features}"


class PeftAdaptation(nn.Module):
    """What the probes read of an :class:`~workbench.adapt.Adaptation`, over a PEFT model: ``model``,
    ``named_layers()``, ``module_names``, ``saved_modules()`` (PEFT's ``modules_to_save``), ``shared`` (None) and the
    trainable tensors (``named_parameters()``: the model's)."""

    def __init__(self, model: nn.Module, layers: dict[str, PeftLoraView], saved: dict[str, nn.Module],
                 config: dict[str, Any]):
        super().__init__()
        self.__dict__["model"] = model
        self.views = nn.ModuleDict({k.replace(".", "/"): v for k, v in layers.items()})
        self._names, self._saved, self.config, self.shared = list(layers), saved, config, None

    def named_layers(self) -> Iterator[tuple[str, PeftLoraView]]:
        for name in self._names:
            yield name, self.views[name.replace(".", "/")]

    @property
    def module_names(self) -> list[str]:
        return list(self._names)

    @property
    def variant_name(self) -> str:
        return "lora"

    def saved_modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield from self._saved.items()

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        yield from self.model.named_parameters(prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _short(name: str) -> str:
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def peft_adaptation(model: nn.Module) -> PeftAdaptation:
    """The :class:`PeftAdaptation` of a PEFT model's active LoRA adapter; module names are the base model's
    (``encoder.layer.0.attention.self.query``). Other PEFT methods, DoRA, LoRA biases, several active adapters and
    non-linear layers are :class:`ConfigError`\\ s naming them."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    layers: dict[str, PeftLoraView] = {}
    saved: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            saved[_short(name)] = module.modules_to_save[module.active_adapter]
            continue
        if not isinstance(module, BaseTunerLayer):
            continue
        if not isinstance(module, LoraLayer):
            raise ConfigError(f"ProbeCallback: {_short(name)} is a PEFT {type(module).__name__}; only LoRA "
                              f"adapters (peft_type LORA) are read")
        active = list(module.active_adapters)
        if len(active) != 1:
            raise ConfigError(f"ProbeCallback: {_short(name)} has {len(active)} active adapters ({active}); "
                              f"activate exactly one")
        adapter = active[0]
        if adapter not in module.lora_A:
            raise ConfigError(f"ProbeCallback: {_short(name)} is a {type(module).__name__} (LoRA on embeddings or "
                              f"convolutions); only LoRA on linear layers is read")
        for option in ("use_dora", "lora_bias"):
            if getattr(module, option, {}).get(adapter):
                raise ConfigError(f"ProbeCallback: {option}=True at {_short(name)} is not supported (its update is "
                                  f"not s·B A); train plain LoRA or rsLoRA")
        layers[_short(name)] = PeftLoraView(module, adapter, _short(name))
    if not layers:
        raise ConfigError("ProbeCallback: the model has no PEFT LoRA layers (and is not a workbench Adaptation); "
                          "pass adaptation= for a model adapted with wb.adapt")
    peft_config = getattr(model, "peft_config", {})
    cfg = next(iter(peft_config.values()), None) if isinstance(peft_config, dict) else None
    config = {}
    if cfg is not None:
        config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.to_dict().items()
                  if k in ("peft_type", "r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules",
                           "modules_to_save", "rank_pattern", "alpha_pattern")}
    return PeftAdaptation(model, layers, saved, config)


# -- the loss the probes use ---------------------------------------------------------------------------------------
class TrainerLoss:
    """The loss of a batch as the Trainer computes it without a custom ``compute_loss``: ``model(**batch).loss``
    (the first output for a tuple)."""

    name = "hf"

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return _loss_of(model(**batch))


def _loss_of(output: Any) -> torch.Tensor | None:
    if isinstance(output, Mapping):
        return output.get("loss")
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) and output[0].ndim == 0:
        return output[0]
    return getattr(output, "loss", None)


# -- the callback --------------------------------------------------------------------------------------------------
class ProbeCallback(TrainerCallback):
    """Run workbench probes while ``transformers.Trainer`` trains, and record a :class:`~workbench.runs.Run`.

    Args:
        store: a :class:`RunStore` or a folder; the run is begun at ``on_train_begin`` and appended to at every
            probe step (None: kept in memory only, as :attr:`run`).
        probes: ``"default"``, ``"all"``, a list of names, or None (see :func:`workbench.probes.get_probes`).
        every: probe every this many optimizer steps (and at the last step).
        task: anything with ``loss(model, batch)`` for the probes that need a loss (default: :class:`TrainerLoss`)
            and, when it has one, a ``name`` recorded as the run's task.
        adaptation: the :class:`~workbench.adapt.Adaptation` when the Trainer trains its bare model.
    """

    def __init__(self, store: RunStore | str | None = None, probes: Any = "default", every: int = DEFAULT_EVERY,
                 task: Any = None, adaptation: Any = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"ProbeCallback: every={every!r} is invalid; every must be an integer in [1, inf]")
        self.store = RunStore(store) if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__") else store
        self.probe_list = get_probes(probes)
        self.every, self.task, self._given = every, task, adaptation
        self.run: Run | None = None
        self.adaptation: Any = None
        self.probe_seconds = 0.0

    # -- setup ---------------------------------------------------------------------------------------------
    def _adaptation(self, model: nn.Module):
        from .adapt import Adaptation

        if self._given is not None:
            return self._given, False
        if isinstance(model, Adaptation):
            return model, False
        return peft_adaptation(model), True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        self.adaptation, self.is_peft = self._adaptation(model)
        self.loss_task = self.task if self.task is not None else TrainerLoss()
        variant = "lora" if self.is_peft else self.adaptation.variant.name
        task = getattr(self.task, "name", None) or f"hf:{_model_name(model)}"
        config = self.adaptation.config if self.is_peft else self.adaptation.config.to_dict()
        self.run = Run(id=new_run_id(variant, task), config={
            "task": task, "task_options": self.task.options() if hasattr(self.task, "options") else {},
            "variant": variant, "config": config, "targets": self.adaptation.module_names,
            "steps": state.max_steps, "lr": args.learning_rate,
            "batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps, "seed": args.seed,
            "every": self.every, "device": str(args.device), "probes": [p.name for p in self.probe_list],
            "source": "transformers.Trainer" + (" + peft" if self.is_peft else ""),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, adaptation=self.adaptation)
        self.states = {p.name: {} for p in self.probe_list}
        self.ctx = StepContext(adaptation=self.adaptation, step=0, total_steps=state.max_steps, lr=args.learning_rate,
                               task=self.loss_task)
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.micro: list[torch.Tensor] = []
        self.batch, self.probing, self.flushed, self.probe_seconds = None, False, 0, 0.0
        self.hooks = [model.register_forward_pre_hook(self._capture_batch, with_kwargs=True),
                      model.register_forward_hook(self._capture_loss)]
        if self.store is not None:
            self.store.begin(self.run)
        self.started = time.perf_counter()

    def _capture_batch(self, module, args, kwargs):
        if module.training and not self.probing:
            self.batch = dict(kwargs) if kwargs else (args[0] if len(args) == 1 else args)

    def _capture_loss(self, module, args, output):
        if module.training and not self.probing:
            loss = _loss_of(output)
            if loss is not None:
                self.micro.append(loss.detach())

    # -- the probes ------------------------------------------------------------------------------------------
    def _probe_step(self, state) -> bool:
        step = state.global_step
        return step % self.every == 0 or step == state.max_steps - 1

    def _probe(self, phase: str, state, optimizer) -> None:
        started = time.perf_counter()
        self.probing = True
        step = state.global_step
        self.ctx.step, self.ctx.batch, self.ctx.optimizer = step, self.batch, optimizer
        if optimizer is not None:
            self.ctx.lr = optimizer.param_groups[0]["lr"]
        try:
            with preserved_modes(self.model):
                if phase == "after_step":
                    self.model.eval()
                for probe in self.probe_list:
                    pctx = ProbeContext(adaptation=self.adaptation, task=self.loss_task, step=step, batch=self.batch,
                                        state=self.states[probe.name], loop=self.ctx)
                    out = getattr(probe, phase)(pctx)
                    if out is not None:
                        out.record(self.run, step, probe.name)
        finally:
            self.probing = False
            self.probe_seconds += time.perf_counter() - started

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self._probe_step(state):
            self._probe("before_step", state, optimizer)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self._probe_step(state):
            self._probe("after_step", state, optimizer)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step - 1  # the Trainer counted the step just taken
        if self.micro:
            self.pending.append((step, torch.stack(self.micro).float().mean()))
            self.micro = []
        if step % self.every == 0 or state.global_step >= state.max_steps:
            self._flush()

    def _flush(self) -> None:
        started = time.perf_counter()
        if self.pending:
            values = torch.stack([v for _, v in self.pending]).tolist()  # one device sync per probe step
            for (step, _), value in zip(self.pending, values):
                self.run.log(step, "train", "", "loss", value)
            self.pending = []
        rows = self.run._rows[self.flushed:]
        self.flushed = len(self.run._rows)
        if self.store is not None:
            self.store.append(self.run, rows)
        self.probe_seconds += time.perf_counter() - started

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, name in (("grad_norm", "grad_norm_before_clip"), ("learning_rate", "lr")):
            if logs and isinstance(logs.get(key), (int, float)):
                self.run.log(max(state.global_step - 1, 0), "train", "", name, logs[key])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        for key, value in (metrics or {}).items():
            key = key[5:] if key.startswith("eval_") else key
            if key not in _EVAL_SKIP and isinstance(value, (int, float)):
                self.run.log(state.global_step, "eval", "", key, value)

    def on_train_end(self, args, state, control, **kwargs):
        for h in self.hooks:
            h.remove()
        self._flush()
        run, wall = self.run, time.perf_counter() - self.started
        train_seconds = max(wall - self.probe_seconds, 1e-9)
        evals = run.metrics[(run.metrics.probe == "eval") & (run.metrics.key == "loss")]
        run.status = "completed" if state.global_step >= state.max_steps else "stopped"
        run.summary.update({
            "status": run.status, "steps_done": state.global_step, "trainable_params": self.adaptation.num_trainable(),
            "seconds_per_step": train_seconds / max(state.global_step, 1), "probe_seconds": self.probe_seconds,
            "probe_overhead": self.probe_seconds / train_seconds, "metric": "loss", "higher_is_better": False,
            "final_loss": float(evals.value.iloc[-1]) if len(evals) else None,
            "metric_value": float(evals.value.iloc[-1]) if len(evals) else None})
        if self.store is None:
            return
        if self.is_peft:  # the run store saves workbench adapters; PEFT's is saved by PEFT, beside it
            run.adaptation = None
            try:
                self.store.save(run)
                if run.path is not None:
                    self.model.save_pretrained(str(run.path / "peft"), safe_serialization=True)
            finally:
                run.adaptation = self.adaptation
        else:
            self.store.save(run)


def _model_name(model: nn.Module) -> str:
    """The hub id of the trained model (``sentence-transformers/all-MiniLM-L6-v2``), or its class for a local
    folder (whose path would say where the files live, not what they are)."""
    inner = getattr(getattr(model, "base_model", None), "model", None) or getattr(model, "model", None) or model
    config = getattr(model, "config", None) or getattr(inner, "config", None)
    name = str(getattr(config, "_name_or_path", "") or "")
    if not name or name.startswith((".", "/", "~")) or Path(name).exists():
        return type(inner).__name__
    return name
