"""Training settings, declared once: :class:`TrainSettings`, task defaults, (variant, task) presets, and the one
place where they are merged (:func:`resolve`).

Every value ``train()`` uses comes from one of four layers, lowest first:

1. ``default``  - the field's default in :class:`TrainSettings` or the variant's config (the paper's value);
2. ``task``     - the task's declared training defaults (``Task.defaults``: steps, lr, batch size, cadence);
3. ``preset``   - the variant's :class:`Preset` for this task, where a method needs other values than its paper's
   large-model defaults to show its behaviour within a short run (SoRA's λ, AdaLoRA's schedule, ...);
4. ``explicit`` - what the caller passed. An explicit value always wins.

:func:`resolve` returns the merged settings and config plus ``sources``, the layer each value came from, which the
run records (``run.config["sources"]``), so a figure or a table can say "lr 1e-3 (task default)".
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ConfigError
from .options import Options, param

__all__ = ["TrainSettings", "Preset", "Resolved", "resolve", "split_overrides"]


@dataclass
class TrainSettings(Options):
    """What the training loop needs, apart from the task, the variant and the variant's own config."""

    owner: ClassVar[str] = "train"

    steps: int = param(200, low=1, high=10_000_000, help="optimizer steps")
    lr: float = param(1e-2, low=0, low_open=True, help="peak learning rate (a huge one diverges, and the run says so)")
    batch_size: int = param(32, low=1, high=65_536, help="training examples per step")
    seed: int = param(0, low=0, high=2**31 - 1, help="seed for the adapter's init, the data order and dropout")
    lr_schedule: str = param("constant", choices=("constant", "linear", "cosine"),
                             help="learning-rate decay after warmup: constant, linear to 0, or cosine to 0")
    lr_warmup: float = param(0.0, low=0.0, high=0.5, help="fraction of the steps with a linear warmup from 0")
    weight_decay: float = param(0.0, low=0.0, high=10.0, help="AdamW's decoupled weight decay")
    max_grad_norm: float | None = param(None, low=0, low_open=True, help="clip the total gradient norm (none: off)")
    recipe: str | None = param(None, help="optimizer recipe (none: the variant's own, adamw for most)")
    every: int = param(10, low=1, high=1_000_000, help="run the probes every this many steps")
    probe_budget: float | None = param(0.05, low=0, low_open=True, high=1,
                                       help="share of the training time the probes may take: a probe that costs more "
                                            "skips steps of the cadence (none: every probe every `every` steps)")
    eval_every: int | None = param(None, low=1, high=10_000_000,
                                   help="evaluate on validation data every this many steps (none: 10 times a run)")
    divergence_factor: float = param(1e4, low=1, low_open=True,
                                     help="a loss above this many times the first loss counts as divergence")
    device: str = param("auto", help="auto (CUDA, then Apple MPS, then the CPU), cpu, cuda, cuda:1, mps")
    dtype: str = param("float32", choices=("float32", "bfloat16", "float16"),
                       help="precision of the forward and the loss (autocast; adapter weights stay float32): "
                            "bfloat16 on any device, float16 on CUDA/MPS only (with loss scaling)")

    @classmethod
    def _kind(cls) -> str:
        return "setting"

    def validate(self, shapes=None) -> None:
        if isinstance(self.lr, float) and math.isnan(self.lr):
            # NaN passes on purpose: a legal float that makes training diverge, which the run then reports
            return Options.validate(self.replace(lr=1.0), shapes)
        return super().validate(shapes)

    def check(self, shapes) -> None:
        from .devices import check_name

        check_name(self.device)  # the form only; whether this machine has the device is train()'s question
        if self.recipe is not None:
            from .recipes import get_recipe

            get_recipe(self.recipe)  # an unknown name is a ConfigError listing the known ones

    def eval_interval(self) -> int:
        """``eval_every``, or about ten evaluations per run when it is not set."""
        return self.eval_every or max(1, self.steps // 10)

    def lr_factor(self, step: int) -> float:
        """The multiplier of every group's base rate at ``step`` (0-based): linear warmup, then the decay."""
        warm = int(round(self.lr_warmup * self.steps))
        if step < warm:
            return (step + 1) / warm
        if self.lr_schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, self.steps - warm)
        if self.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Preset:
    """Values a variant needs on a task (or a family of tasks) to show its behaviour in a short run.

    Declared next to the variant (``Variant.presets``), never in the dashboard or a notebook. ``task`` is a task
    name or an ``fnmatch`` pattern (``"synthetic:*"``); the most specific match wins (an exact name, then the
    longest pattern). ``reason`` is one line for the docs table and the dashboard.
    """

    task: str
    config: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def matches(self, task_name: str) -> bool:
        return fnmatch.fnmatchcase(task_name, self.task)


def find_preset(presets, task_name: str) -> Preset | None:
    """The most specific preset for ``task_name`` (exact name first, then the longest matching pattern)."""
    hits = [p for p in presets if p.matches(task_name)]
    if not hits:
        return None
    return max(hits, key=lambda p: (p.task == task_name, len(p.task.replace("*", ""))))


@dataclass
class Resolved:
    """The outcome of :func:`resolve`: settings, the variant's config values, and where each value came from."""

    settings: TrainSettings
    config: dict[str, Any]
    sources: dict[str, dict[str, str]]
    preset: Preset | None = None


def split_overrides(variant_cls, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat keyword arguments of ``train()`` split into (settings, variant config). A key that names both a setting
    and a config field is ambiguous: the caller must say which with ``settings=`` or ``config=``."""
    setting_names = set(TrainSettings.field_names())
    config_names = set(variant_cls.Config.field_names())
    settings, config = {}, {}
    for key, value in overrides.items():
        if key in setting_names and key in config_names:
            raise ConfigError(
                f"train: {key!r} is both a training setting and a {variant_cls.name} config field; pass "
                f"settings={{{key!r}: ...}} for the loop's {key} or config={{{key!r}: ...}} for {variant_cls.name}'s")
        (settings if key in setting_names else config)[key] = value
    return settings, config


def resolve(task, variant_cls, settings: dict[str, Any] | None = None, config: dict[str, Any] | None = None, *,
            use_presets: bool = True) -> Resolved:
    """Merge defaults, the task's defaults, the variant's preset for the task and the explicit values.

    ``task`` is a Task (its ``name`` picks the preset, its ``defaults`` the task layer). Unknown keys raise
    :class:`ConfigError`; ranges are checked on the merged settings (the config is checked by ``adapt()``, which
    knows the layer shapes).
    """
    explicit_settings, explicit_config = dict(settings or {}), dict(config or {})
    TrainSettings.check_keys(explicit_settings)
    variant_cls.Config.check_keys(explicit_config)
    task_defaults = dict(getattr(task, "defaults", {}) or {})
    TrainSettings.check_keys(task_defaults)
    preset = find_preset(getattr(variant_cls, "presets", ()), task.name) if use_presets else None

    layers_s = [("task", task_defaults), ("preset", preset.settings if preset else {}), ("explicit",
                                                                                       explicit_settings)]
    layers_c = [("preset", preset.config if preset else {}), ("explicit", explicit_config)]
    merged_s, src_s = _merge(TrainSettings.field_names(), layers_s)
    merged_c, src_c = _merge(variant_cls.Config.field_names(), layers_c)
    resolved = TrainSettings(**merged_s)
    resolved.validate()
    return Resolved(resolved, merged_c, {"settings": src_s, "config": src_c}, preset)


def _merge(names, layers) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    sources = {n: "default" for n in names}
    for source, layer in layers:
        for key, value in layer.items():
            values[key], sources[key] = value, source
    return values, sources
