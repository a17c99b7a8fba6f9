"""The one interface every variant implements, the registry, and config validation.

A *variant* is a registered :class:`Variant` subclass that names three things:

* ``Config``  - a dataclass of hyper-parameters with the paper's defaults. Every field is declared with
  :func:`param`, which records its allowed range, so validation, the CLI and the dashboard's generated forms
  all read the same source of truth.
* ``Layer``   - a :class:`VariantLayer` that wraps one frozen ``nn.Linear`` (``self.base``), or, for a layer that
  says so in :attr:`VariantLayer.wraps` (bottleneck adapters), one frozen module of any type, acting on its output.
* ``Shared``  - optionally, a :class:`Shared` module built once from every target's shape and handed to each
  layer (random bases, one global vector, shared factors).

Training-time procedures hook in through :meth:`Variant.regularizer` (added to the loss),
:meth:`Variant.on_step` (after each optimizer step: proximal steps, rank growth and pruning, location updates,
schedules) and :meth:`Variant.prepare` (before the optimizer is built: data-driven initialisations).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch
from torch import nn

from .errors import ConfigError
from .events import StepContext

if TYPE_CHECKING:  # pragma: no cover
    from .settings import Preset
from .options import Options, Shape, param

__all__ = [
    "ConfigError",
    "param",
    "VariantConfig",
    "VariantLayer",
    "DenseDeltaLayer",
    "Shared",
    "Variant",
    "VariantInfo",
    "register",
    "get_variant",
    "variant_infos",
    "variants",
    "variant_names",
    "variant_table",
]


@dataclass
class VariantConfig(Options):
    """Base class of every variant's config. Subclasses add fields declared with :func:`param`; ``register`` sets
    ``variant`` (and ``owner``, the name in error messages) to the variant's key."""

    variant: ClassVar[str] = "?"


# ---------------------------------------------------------------------------------------------------- layers


class Shared(nn.Module):
    """Parameters or frozen tensors shared by every adapted layer (random bases, a global vector ...).

    Built once by ``adapt()`` from ``shapes`` (name -> (out, in) of every target, in model order). Frozen random
    tensors must be registered with ``persistent=False`` and regenerated from ``seed``: they are never saved.
    """

    #: as :attr:`VariantLayer.no_decay`, for the shared module's trainable tensors
    no_decay: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: VariantConfig, shapes: dict[str, Shape], seed: int):
        super().__init__()
        self.config, self.shapes, self.seed = config, dict(shapes), seed


class VariantLayer(nn.Module):
    """Wraps one frozen ``nn.Linear`` as ``self.base`` and adds the variant's update.

    Contract (checked by ``tests/test_conformance.py`` for every registered variant):

    * ``forward(x) == base(x) + delta_forward(x)``; the adapter path is computed the cheap way.
    * ``delta_weight()`` is the dense ΔW with ``forward(x) == base(x) + x @ ΔWᵀ`` when ``linear_delta``.
    * ``factors()`` returns ``(B, A)`` with ``ΔW == B @ A`` when the update has a low-rank form, else ``None``.
    * ``inspect()`` returns the variant's own views (``gates``, ``rank``, ``coefficients``, ``locations``, ...).
    * ``merge()``/``unmerge()`` fold the update into the base weight and back.

    Two notions of "the update", kept apart. ``delta_weight()``/``factors()`` are relative to ``self.base`` (what
    ``forward`` and ``merge()`` need). :meth:`update` (and :meth:`update_factors`) is the change from the *original*
    pretrained weight, :meth:`pretrained_weight`: ``effective_weight() − W0``. They differ for variants that re-base
    the frozen layer (PiSSA's residual W0 − s·B0 A0, QWHA's quantised W0); every probe, figure and export reads
    :meth:`update`, so a ΔW means the same thing for every variant.
    """

    #: ΔW is a linear map added to W (False for DoRA's magnitude, bottleneck adapters, FoRA, TLoRA...).
    linear_delta: ClassVar[bool] = True
    #: the layer is a linear map with an effective weight at all (False for input-dependent updates such as FoRA's:
    #: then there is no ΔW to show, merge or export, and probes that read ΔW skip the layer)
    has_weight: ClassVar[bool] = True
    #: the basis ``inspect()['locations']`` index (figures overlay them on that frequency map): dct, fft or wht
    frequency_basis: ClassVar[str] = "dct"
    #: whether ``inspect()['locations']`` move during training (LoCA) or stay where initialisation put them
    learned_locations: ClassVar[bool] = False
    #: which sides of ΔW the basis transforms: "both" (C_out ΔW C_inᵀ) or "input" (ΔW H, QWHA's F; rows stay channels)
    frequency_sides: ClassVar[str] = "both"
    #: attribute names of trainable tensors (or ``ParameterList``s/modules) whose zero is not "no change": weight
    #: decay toward 0 would move the model away from W0 with zero gradients (DoRA's magnitude, PiSSA's factors,
    #: LoLDU's z, SVFit's σ, TLoRA's transform cores, QWHA's correction). :meth:`Variant.param_groups` keeps them out
    #: of weight decay; checked for every variant by ``tests/test_faithfulness_lowrank.py``.
    no_decay: ClassVar[tuple[str, ...]] = ()
    #: the module types this layer can wrap; ``adapt()`` matches targets among modules of these types. ``nn.Linear``
    #: for every layer that updates a weight; a bottleneck adapter wraps any module (a feed-forward block, a Linear)
    #: and acts on its output, so it says ``(nn.Module,)`` and overrides :meth:`target_shape`
    wraps: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear,)
    #: the layer is a function of the wrapped module's output alone (``forward = g(base(...))``), so layers of several
    #: adaptations nest on one module and ``workbench.compose`` stacks them (MAD-X's Stack); False for weight updates,
    #: which compose by adding their ΔW instead (``linear_delta``)
    stacks: ClassVar[bool] = False

    @classmethod
    def target_shape(cls, module: nn.Module) -> Shape:
        """``(out, in)`` of a module this layer would wrap: what config validation, memory estimates and error
        messages read. Default: the Linear's ``(out_features, in_features)``."""
        return (module.out_features, module.in_features)

    def __init__(self, base: nn.Module, config: VariantConfig, shared: Shared | None = None, name: str = ""):
        super().__init__()
        if not isinstance(base, self.wraps):
            kinds = " or ".join(("nn." if t.__module__.startswith("torch.nn") else "") + t.__name__
                                for t in self.wraps)
            raise ConfigError(f"{config.variant}: can only adapt {kinds} modules; {name} is "
                              f"{type(base).__name__}")
        self.base = base
        self.config = config
        self.name = name
        # a plain attribute, not a submodule: the shared module is registered once, on the Adaptation
        self.__dict__["shared"] = shared
        self.merged = False
        self.disabled = False
        self._merge_backup: torch.Tensor | None = None

    # -- shapes ---------------------------------------------------------------------------------------------
    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (out, in), so code that reads ``module.weight`` keeps working."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    # -- the contract ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base(x)
        return self.base(x) + self.delta_forward(x)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter path alone. Default: through the factors if any, else the dense ΔW."""
        f = self.factors()
        if f is not None:
            b, a = f
            return (x @ a.t()) @ b.t()
        return x @ self.delta_weight().t()

    def delta_weight(self) -> torch.Tensor:
        """Dense ΔW (out, in): B A for variants with ``factors()``; non-linear variants return
        ``effective_weight() - W0`` where that exists."""
        f = self.factors()
        if f is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither factors() nor delta_weight()")
        b, a = f
        return b @ a

    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def peft_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """This layer in PEFT's LoRA tensors, ``(lora_A [r, in], lora_B [out, r], lora_magnitude_vector [out] or
        None)``, such that PEFT under the variant's :meth:`Variant.peft_settings` computes this layer's output.
        Read by ``export_peft`` only when ``peft_settings`` gives settings; ``None`` (the default): the layer is
        exported as a scale-1 LoRA from the truncated SVD of its ΔW."""
        return None

    def effective_weight(self) -> torch.Tensor:
        """The weight an equivalent plain ``nn.Linear`` would have (W0 + ΔW for linear variants)."""
        return self.base.weight + self.delta_weight()

    def pretrained_weight(self) -> torch.Tensor:
        """The original pretrained W0 (out, in) of the wrapped layer, before any variant re-bases its frozen copy
        (PiSSA's W_res, QWHA's W_Q override this). Default: ``base.weight``. Not meaningful while merged."""
        return self.base.weight

    def update(self) -> torch.Tensor:
        """The change from the original W0: ``effective_weight() − pretrained_weight()`` (out, in). This, not
        :meth:`delta_weight` (which is relative to ``self.base``), is what probes, figures and exports read. For a
        layer whose base is W0 itself it is ``delta_weight()``, computed without the subtraction."""
        w0 = self.pretrained_weight()
        if w0 is self.base.weight:
            return self.delta_weight()
        return self.effective_weight() - w0

    def update_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(B, A)`` with ``update() == B @ A`` when the change from W0 has a low-rank form, else ``None``: the
        spectra probe's fast path. Default: :meth:`factors` when the base is W0 itself; a re-basing layer overrides
        this (PiSSA) or has none (QWHA)."""
        return self.factors() if self.pretrained_weight() is self.base.weight else None

    def inspect(self) -> dict[str, torch.Tensor]:
        return {}

    def merge(self) -> None:
        """Fold the update into ``base.weight`` so forward costs one matmul."""
        if not self.has_weight:
            raise ConfigError(f"{self.config.variant}: {self.name} cannot be merged: its update depends on the input, "
                              "so no weight matrix represents it")
        if self.merged:
            return
        with torch.no_grad():
            w = self.base.weight
            if self.linear_delta:
                w.add_(self.delta_weight().to(w.dtype))
            else:
                self._merge_backup = w.detach().clone()
                w.copy_(self.effective_weight().to(w.dtype))
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        with torch.no_grad():
            w = self.base.weight
            if self._merge_backup is not None:
                w.copy_(self._merge_backup)
                self._merge_backup = None
            else:
                w.sub_(self.delta_weight().to(w.dtype))
        self.merged = False

    # -- state -------------------------------------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """What ``Adaptation.save`` writes: every parameter and persistent buffer that is not the base's."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`adapter_state`. Variants whose shapes change while training (rank growth, pruning)
        override this to resize before loading."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("base.")]
        if missing or unexpected:
            raise ConfigError(f"{self.config.variant}: adapter state for {self.name} does not match: missing "
                              f"{missing}, unexpected {unexpected}")

    def extra_repr(self) -> str:
        return f"{self.config.variant}, in={self.in_features}, out={self.out_features}"


class DenseDeltaLayer(VariantLayer):
    """For variants that build a dense ΔW anyway (spectral, random-basis sums, transforms): the layer runs one matmul
    with W0 + ΔW — the adapter costs what fine-tuning the layer costs, instead of a second pass over the tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base(x)
        return torch.nn.functional.linear(x, self.effective_weight(), self.base.bias)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.delta_weight())


# --------------------------------------------------------------------------------------------------- variants


class Variant:
    """A registered method: its config, its layer, its shared module and its training-time hooks.

    Subclasses set ``Config`` and ``Layer`` (and ``SharedModule`` when layers share tensors); ``register``
    fills ``name``, ``family``, ``paper``. ``summary`` is one paragraph for people; ``formula`` is the ΔW
    formula in Markdown/LaTeX. ``example_config`` is a small config for docs, demos and conformance tests.
    """

    name: ClassVar[str] = "?"
    family: ClassVar[str] = "?"
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    formula: ClassVar[str] = ""
    Config: ClassVar[type[VariantConfig]] = VariantConfig
    Layer: ClassVar[type[VariantLayer]] = VariantLayer
    SharedModule: ClassVar[type[Shared] | None] = None
    #: the variant changes its own allocation (ranks, gates, locations) while training
    dynamic: ClassVar[bool] = False
    #: what a dynamic variant allocates: "rank" (the allocation heatmap draws it) or another word for what moves
    #: (LoCA: "spectral locations", drawn by the location views); the heatmap of the unallocated rank is one line
    allocation: ClassVar[str] = "rank"
    #: the adapted model's output equals the original model's at initialisation
    preserves_init: ClassVar[bool] = True
    example_config: ClassVar[dict[str, Any]] = {}
    #: what is simplified or could not be confirmed against the paper (shown in docs/VARIANTS.md)
    notes: ClassVar[str] = ""
    #: non-empty when the method is reconstructed from the abstract (no method section or official code found):
    #: one line saying what was reconstructed; shown in docs/VARIANTS.md, the Learn tab and ``variant_table()``
    reconstruction: ClassVar[str] = ""
    #: recipe used when ``train(recipe=None)``; "adamw" unless the method is an optimizer-level recipe
    default_recipe: ClassVar[str] = "adamw"
    #: values this method needs on a task to show its behaviour in a short run (``workbench.settings.Preset``);
    #: applied by ``train()``, ``compare()``, the dashboard and the CLI unless the caller says otherwise
    presets: ClassVar[tuple[Preset, ...]] = ()

    @classmethod
    def preset_for(cls, task_name: str) -> Preset | None:
        """The most specific of :attr:`presets` for ``task_name`` (exact name, then the longest pattern)."""
        from .settings import find_preset

        return find_preset(cls.presets, task_name)
    #: the config field that sizes the adapter, searched by ``compare(budget=...)``; ``None``: the first of ``r``,
    #: ``n``, ``rank``, ``n_coefficients`` in the config (none of them: nothing to size, as for full fine-tuning)
    budget_field: ClassVar[str | None] = None

    def __init__(self, config: VariantConfig):
        self.config = config

    @classmethod
    def linear_delta(cls) -> bool:
        return cls.Layer.linear_delta

    @classmethod
    def peft_settings(cls, config: VariantConfig) -> dict[str, Any] | None:
        """The ``adapter_config.json`` fields (``r``, ``lora_alpha``, ``use_rslora``, ``use_dora``) under which PEFT's
        LoRA reproduces this variant from its layers' :meth:`VariantLayer.peft_factors`, for ``config``. ``None``
        (the default): no native PEFT form; ``export_peft`` writes every layer's ΔW as a scale-1 LoRA instead."""
        return None

    # hooks ------------------------------------------------------------------------------------------------
    def prepare(self, ctx: StepContext, batches) -> None:
        """Before the optimizer is built: data-driven initialisation (LoRA-SB, ...). ``ctx`` has the adaptation,
        the task, the run's length and rate; ``batches`` is an iterator of training batches on the model's device."""

    def param_groups(self, adaptation, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups; override for per-tensor learning rates.

        Weight decay pulls a tensor toward 0, which is "no change" only for tensors whose zero is the untouched
        model (LoRA's B, VeRA's b ...). The tensors each layer (and the shared module) declares in ``no_decay`` go to
        a group of their own (named ``"no_decay"``) with weight decay 0, so that zero gradients plus weight decay
        leave the effective weight where it started for every variant (before, DoRA's magnitude moved W by 18%,
        TLoRA's transform by 33% in 200 AdamW steps at wd 0.1, lr 1e-2)."""
        kept = no_decay_ids(adaptation)
        params = [p for p in adaptation.parameters() if p.requires_grad]
        decayed = [p for p in params if id(p) not in kept]
        groups = [{"params": decayed, "lr": lr, "weight_decay": weight_decay}]
        if len(decayed) < len(params):
            groups.append({"params": [p for p in params if id(p) in kept], "lr": lr, "weight_decay": 0.0,
                           "name": "no_decay"})
            if not decayed:
                groups.pop(0)
        return groups

    def regularizer(self, ctx: StepContext) -> torch.Tensor | None:
        """A term added to the loss (orthogonality, L1, KL, ...) at step ``ctx.step``; ``None`` for none."""
        return None

    def on_step(self, ctx: StepContext) -> None:
        """After each optimizer step (``ctx.step``, 0-based, of ``ctx.total_steps``): proximal updates, rank
        growth/pruning, location updates, schedules. ``ctx.optimizer`` is the optimizer just stepped."""


def no_decay_ids(adaptation) -> set[int]:
    """``id()`` of every tensor that the adaptation's layers and shared module declare in ``no_decay``."""
    owners = [layer for _, layer in adaptation.named_layers()]
    if getattr(adaptation, "shared", None) is not None:
        owners.append(adaptation.shared)
    ids: set[int] = set()
    for owner in owners:
        for attr in owner.no_decay:
            value = getattr(owner, attr)
            ids.update(id(p) for p in (value.parameters() if isinstance(value, nn.Module) else [value]))
    return ids


@dataclass(frozen=True)
class VariantInfo:
    name: str
    family: str
    paper: str
    summary: str
    formula: str
    config: type[VariantConfig]
    linear_delta: bool
    dynamic: bool
    cls: type[Variant]
    reconstruction: str = ""


_REGISTRY: dict[str, type[Variant]] = {}


def register(name: str, *, family: str, paper: str) -> Callable[[type[Variant]], type[Variant]]:
    """Class decorator: ``@register("sora", family="rank", paper="Ding et al., 2023, arXiv:2311.11696")``."""
    if name != name.lower():
        raise ValueError(f"variant names are lowercase paper names; got {name!r}")

    def deco(cls: type[Variant]) -> type[Variant]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"variant {name!r} is registered twice ({_REGISTRY[name].__module__} and "
                             f"{cls.__module__})")
        cls.name, cls.family, cls.paper = name, family, paper
        cls.Config.variant = cls.Config.owner = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    # importing the package registers every variant (recipes register themselves in ``workbench.recipes``)
    import importlib

    importlib.import_module("workbench.variants")


def variant_names() -> list[str]:
    return [c.name for c in _ordered()]


def get_variant(name: str) -> type[Variant]:
    """The registered class for ``name``; unknown names raise :class:`ConfigError` with suggestions."""
    _load_all()
    if isinstance(name, type) and issubclass(name, Variant):
        return name
    key = str(name).lower()
    if key not in _REGISTRY:
        hint = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        raise ConfigError(f"unknown variant {name!r}" + (f"; did you mean {', '.join(map(repr, hint))}?" if hint
                                                         else "") + f" Known: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[key]


#: display order of the registered variants: baselines first, then the families as docs/DESIGN.md lists them. Only
#: registered names belong here (tests/test_variant_order.py checks it); a variant not listed needs no edit here: it
#: is shown after the last listed member of its family, or, for a new family, at the end grouped by family, in
#: registration order either way.
CANONICAL_ORDER = ("full lora rslora dora pissa adalora vera fourierft lora-xs lora-sb sora increlora diffora codyra "
                   "bayesian-lora lora-squeeze loca fora qwha randlora nola uni-lora loldu svfit block-lora s2-lora "
                   "comp-lora tlora").split()


def _ordered() -> list[type[Variant]]:
    _load_all()
    registered = list(_REGISTRY.values())  # in registration order
    position = {n: i for i, n in enumerate(CANONICAL_ORDER)}
    family_end: dict[str, int] = {}  # the last listed position of each family
    for c in registered:
        if c.name in position:
            family_end[c.family] = max(family_end.get(c.family, -1), position[c.name])

    def key(item: tuple[int, type[Variant]]) -> tuple:
        i, c = item
        if c.name in position:
            return position[c.name], 0, "", i
        return family_end.get(c.family, len(CANONICAL_ORDER)), 1, c.family, i

    return [c for _, c in sorted(enumerate(registered), key=key)]


def variant_infos() -> list[VariantInfo]:
    """One :class:`VariantInfo` per registered variant, baselines first."""
    return [VariantInfo(c.name, c.family, c.paper, c.summary, c.formula, c.Config, c.linear_delta(), c.dynamic, c,
                        c.reconstruction)
            for c in _ordered()]


def variants() -> list[VariantInfo]:
    """Deprecated alias of :func:`variant_infos` (the name shadowed the package ``workbench.variants``)."""
    import warnings

    warnings.warn("workbench.variants() is deprecated; use workbench.variant_infos()", DeprecationWarning,
                  stacklevel=2)
    return variant_infos()


def variant_table() -> pd.DataFrame:
    """The registry as a DataFrame (one row per variant) for docs, notebooks and the dashboard."""
    rows = []
    for v in variant_infos():
        defaults = {f["name"]: f["default"] for f in v.config.fields_info()}
        rows.append({"name": v.name, "family": v.family, "paper": v.paper, "linear_delta": v.linear_delta,
                     "dynamic": v.dynamic, "reconstruction": v.reconstruction, "defaults": defaults,
                     "summary": v.summary})
    return pd.DataFrame(rows)
