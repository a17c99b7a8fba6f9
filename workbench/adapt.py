"""``adapt()``: find the target layers of a model, wrap them in a variant's layers, freeze the rest.

The returned :class:`Adaptation` is the handle everything else works through: the training loop, the probes,
the run store and the exporters. It can merge, unmerge, disable, remove (restoring the original module objects)
and save itself as ``adapter.safetensors`` + ``adaptation.json``.

A layer may carry its own config (a PEFT import's ``rank_pattern``/``alpha_pattern`` gives one layer another rank or
α): :meth:`Adaptation.rebuild_layer` builds it, :meth:`Adaptation.layer_configs` lists the fields that differ from the
adaptation's config, ``adaptation.json`` stores them as ``layer_configs`` and :func:`load_adaptation` rebuilds those
layers before it loads the tensors, so a save and a load give the same outputs.

``modules_to_save`` (PEFT's name) lists modules that are not wrapped but trained in full beside the adapters, such
as a classifier head: they are unfrozen in place, counted by ``num_trainable()``, saved under the
``modules_to_save.`` prefix and restored by :func:`load_adaptation`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from . import rng
from .errors import ConfigError
from .io import atomic_save_safetensors, atomic_write_json
from .memory import check_adaptation
from .variant import Shared, Variant, VariantLayer, get_variant

__all__ = ["adapt", "Adaptation", "load_adaptation", "match_targets"]

FORMAT_VERSION = 1
SAVED_PREFIX = "modules_to_save."  # tensors of the modules trained in full, in adapter.safetensors


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if fnmatch.fnmatchcase(name, pattern):
        return True
    # PEFT-style: a bare name ("query") matches the last component(s) of a module path
    return not any(c in pattern for c in "*?[") and (name == pattern or name.endswith("." + pattern))


def match_targets(model: nn.Module, targets: str | Iterable[str],
                  wraps: tuple[type[nn.Module], ...] = (nn.Linear,)) -> list[str]:
    """Names of the modules selected by ``targets`` (globs, ``re:<regex>``, or bare suffixes like ``"query"``), in
    model order, among the modules of the types ``wraps`` (a variant layer's :attr:`VariantLayer.wraps`; ``nn.Linear``
    unless the layer wraps other modules, as bottleneck adapters do). A pattern that matches no such module is a
    :class:`ConfigError` that lists the closest names; so is a choice where one selected module holds another."""
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns:
        raise ConfigError("targets is empty; give at least one pattern such as 'layers.*' or 'query'")
    only_linear = tuple(wraps) == (nn.Linear,)
    kind = "nn.Linear layer" if only_linear else "module of type " + " or ".join(t.__name__ for t in wraps)
    linears = [n for n, m in model.named_modules()
               if n and (isinstance(m, wraps) or isinstance(m, VariantLayer))]
    if not linears:
        raise ConfigError(f"the model ({type(model).__name__}) has no {kind}s to adapt")
    chosen: list[str] = []
    for p in patterns:
        hits = [n for n in linears if _matches(p, n)]
        if not hits:
            hint = difflib.get_close_matches(p.removeprefix("re:"), linears, n=3, cutoff=0.3)
            plural = "Linear layers" if only_linear else "Modules"
            raise ConfigError(f"target pattern {p!r} matches no {kind}"
                              + (f"; close names: {', '.join(hint)}" if hint else "")
                              + f". {plural}: {', '.join(linears[:12])}{' ...' if len(linears) > 12 else ''}")
        chosen += [n for n in hits if n not in chosen]
    if not only_linear:  # a Linear holds no Linear; any other module may hold a chosen one
        for n in chosen:
            inner = next((c for c in chosen if c.startswith(n + ".")), None)
            if inner is not None:
                raise ConfigError(f"targets select both {n!r} and {inner!r}, which it contains; a module is wrapped "
                                  "once: narrow the pattern (e.g. 're:blocks\\.\\d+\\.mlp')")
    return [n for n in linears if n in chosen]  # model order


def _device_of(module: nn.Module) -> torch.device:
    """Where a module's tensors live (CPU for one that holds none)."""
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _layer_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7919 + 17) % (2**63 - 1)


class Adaptation(nn.Module):
    """A model adapted with one variant. ``layers`` maps module names to their :class:`VariantLayer`s;
    ``shared`` is the variant's :class:`Shared` module or ``None``.

    It is an ``nn.Module`` so that ``parameters()`` are exactly the adapter's trainable tensors (layers, shared
    and the modules trained in full), ``.to(device)`` moves them, and ``state_dict()`` is the adapter state. The
    wrapped model itself is held as a plain attribute, not a submodule, so its frozen weights are not counted here.
    ``saved`` maps the names of the modules trained in full (``modules_to_save``) to those very modules of the
    model (registered here too, not copied).
    """

    def __init__(self, model: nn.Module, variant: Variant, layers: dict[str, VariantLayer], shared: Shared | None,
                 targets: list[str], originals: dict[str, nn.Module], requires_grad: dict[str, bool], seed: int,
                 saved: dict[str, nn.Module] | None = None):
        super().__init__()
        self.__dict__["model"] = model
        self.variant = variant
        self.config = variant.config
        self.layers = nn.ModuleDict({k.replace(".", "/"): v for k, v in layers.items()})
        self.shared = shared
        self.targets = targets
        self.seed = seed
        self._names = list(layers)
        self.__dict__["_originals"] = originals
        self._requires_grad = requires_grad
        saved = saved or {}
        self.saved = nn.ModuleDict({k.replace(".", "/"): v for k, v in saved.items()})
        self._saved_names = list(saved)

    # -- views --------------------------------------------------------------------------------------------
    def named_layers(self) -> Iterator[tuple[str, VariantLayer]]:
        """(module name, layer) in model order."""
        for n in self._names:
            yield n, self.layers[n.replace(".", "/")]

    def layer(self, name: str) -> VariantLayer:
        return self.layers[name.replace(".", "/")]

    @property
    def module_names(self) -> list[str]:
        return list(self._names)

    @property
    def modules_to_save(self) -> list[str]:
        """Names of the model's modules trained in full beside the adapters."""
        return list(self._saved_names)

    def saved_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """(module name, module) of ``modules_to_save``, in model order."""
        for n in self._saved_names:
            yield n, self.saved[n.replace(".", "/")]

    @property
    def variant_name(self) -> str:
        return self.variant.name

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def num_trainable(self) -> int:
        """Trainable elements: the adapters' (shared tensors counted once) and those of ``modules_to_save``."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """Dense ΔW per module (detached): each layer's ``update()``, the change from the original pretrained W0
        (for PiSSA s·(B A − B0 A0), not ``delta_weight()`` relative to its residual base)."""
        with torch.no_grad():
            return {n: layer.update().detach() for n, layer in self.named_layers() if layer.has_weight}

    def inspect(self) -> dict[str, dict[str, torch.Tensor]]:
        with torch.no_grad():
            return {n: layer.inspect() for n, layer in self.named_layers()}

    # -- merge / disable / remove ---------------------------------------------------------------------------
    def merge(self) -> None:
        """Fold every update into its base weight (a ConfigError for variants without a weight, like FoRA)."""
        for _, layer in self.named_layers():
            layer.merge()

    def unmerge(self) -> None:
        for _, layer in self.named_layers():
            layer.unmerge()

    @contextlib.contextmanager
    def disabled(self):
        """Inside the block the model computes its base output (PEFT's ``disable_adapter``)."""
        before = {n: l.disabled for n, l in self.named_layers()}
        for _, layer in self.named_layers():
            layer.disabled = True
        try:
            yield self
        finally:
            for n, layer in self.named_layers():
                layer.disabled = before[n]

    def merge_and_unload(self) -> nn.Module:
        """Fold every update into its layer's weight and put plain ``nn.Linear`` layers back (PEFT's name): the
        model keeps what it learned and has no adapter left, e.g. between the tasks of continual learning."""
        self.merge()
        for name, layer in self.named_layers():
            _set_module(self.model, name, layer.base)
        for n, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(n, p.requires_grad))
        self._originals.clear()
        return self.model

    def remove(self) -> nn.Module:
        """Put the original module objects back and restore their ``requires_grad``; returns the model.

        The ``modules_to_save`` were trained in place (there is no copy to go back to): they stay as they are,
        the same objects with their trained weights, frozen again like every other parameter."""
        self.unmerge()
        for name, original in self._originals.items():
            _set_module(self.model, name, original)
        for n, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(n, p.requires_grad))
        self._originals.clear()
        return self.model

    # -- persistence ----------------------------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        state = {}
        for n, layer in self.named_layers():
            for k, v in layer.adapter_state().items():
                state[f"{n}.{k}"] = v
        if self.shared is not None:
            for k, v in self.shared.state_dict().items():
                state[f"shared.{k}"] = v
        for n, module in self.saved_modules():
            for k, v in module.state_dict().items():
                state[f"{SAVED_PREFIX}{n}.{k}"] = v
        return state

    def layer_configs(self) -> dict[str, dict[str, Any]]:
        """Per layer, the config fields whose value differs from the adaptation's (layers with their own config,
        e.g. from a PEFT ``rank_pattern``); layers that share the adaptation's config are left out."""
        common = self.config.to_dict()
        out = {}
        for name, layer in self.named_layers():
            own = getattr(layer, "config", self.config)
            if own is self.config:
                continue
            diff = {k: v for k, v in own.to_dict().items() if common.get(k) != v}
            if diff:
                out[name] = diff
        return out

    def rebuild_layer(self, name: str, changes: dict[str, Any]) -> VariantLayer:
        """Replace layer ``name`` by a fresh layer of the same variant built with the adaptation's config changed by
        ``changes`` (validated against the layer's shape), drawing its init from the stream ``adapt()`` gave it."""
        if name not in self._names:
            raise ConfigError(f"layer_configs: {name!r} is not an adapted layer; adapted: {', '.join(self._names)}")
        old = self.layer(name)
        cfg = dataclasses.replace(self.config, **changes)
        cfg.validate({name: (old.out_features, old.in_features)})
        base = self._originals.get(name, old.base)  # the untouched module (PiSSA's layer holds a residual copy)
        with torch.random.fork_rng(devices=[]), rng.seeded(_layer_seed(self.seed, self._names.index(name))):
            torch.manual_seed(_layer_seed(self.seed, self._names.index(name)))
            new = type(old)(base, cfg, shared=self.shared, name=name)
        new.to(_device_of(old.base)).train(old.training)
        _set_module(self.model, name, new)
        self.layers[name.replace(".", "/")] = new
        return new

    def describe(self) -> dict[str, Any]:
        """What ``adaptation.json`` holds: enough to rebuild this adaptation on a fresh model (with the layers
        that have their own config, :meth:`layer_configs`)."""
        out = {"format": FORMAT_VERSION, "variant": self.variant.name, "config": self.config.to_dict(),
               "targets": list(self.targets), "modules": self.module_names, "seed": self.seed,
               "modules_to_save": self.modules_to_save}
        layer_configs = self.layer_configs()
        if layer_configs:
            out["layer_configs"] = layer_configs
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``adapter.safetensors`` and ``adaptation.json`` into ``path`` (atomically, file by file)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(self.adapter_state(), out / "adapter.safetensors")
        atomic_write_json(out / "adaptation.json", self.describe())
        return out


def match_modules_to_save(model: nn.Module, names: str | Iterable[str] | None, adapted: list[str]) -> list[str]:
    """The model's modules named by ``names`` (full names, or PEFT-style bare suffixes like ``"head"``), in model
    order. A name that matches no module (the error lists close names), a module without parameters, or one that
    holds or sits inside an adapted layer is a :class:`ConfigError`."""
    wanted = [names] if isinstance(names, str) else list(names or [])
    modules = dict(model.named_modules())
    candidates = [n for n in modules if n]
    chosen: list[str] = []
    for want in wanted:
        hits = [n for n in candidates if n == want or n.endswith("." + want)]
        if not hits:
            hint = difflib.get_close_matches(want, candidates, n=3, cutoff=0.3)
            raise ConfigError(f"modules_to_save: {want!r} names no module of the model"
                              + (f"; close names: {', '.join(hint)}" if hint else "")
                              + f". Top-level modules: {', '.join(n for n in candidates if '.' not in n)}")
        chosen += [n for n in hits if n not in chosen]
    for n in chosen:
        if next(modules[n].parameters(), None) is None:
            raise ConfigError(f"modules_to_save: {n!r} has no parameters to train")
        clash = [a for a in adapted if a == n or a.startswith(n + ".") or n.startswith(a + ".")]
        if clash:
            raise ConfigError(f"modules_to_save: {n!r} overlaps the adapted layer {clash[0]!r}; a module is either "
                              "adapted (targets) or trained in full (modules_to_save), not both")
    outermost = [n for n in chosen if not any(n.startswith(o + ".") for o in chosen)]
    return [n for n in candidates if n in outermost]  # model order


def adapt(model: nn.Module, variant: str | type[Variant], targets: str | Iterable[str] | None = None, *,
          seed: int = 0, modules_to_save: str | Iterable[str] | None = None, **config: Any) -> Adaptation:
    """Wrap the ``targets`` of ``model`` in place with ``variant``'s layers and freeze everything else.

    ``config`` holds the variant's hyper-parameters (unknown keys and out-of-range values raise
    :class:`ConfigError`). ``seed`` makes initialisation deterministic without touching the global RNG.
    ``modules_to_save`` names modules (e.g. a classifier head) that are not wrapped but trained in full: they are
    unfrozen and become part of the adaptation's parameters, state and saved file (PEFT's ``modules_to_save``).
    """
    cls = get_variant(variant)
    if targets is None:
        targets = getattr(model, "default_targets", None)
        if targets is None:
            raise ConfigError("targets is required (glob patterns of nn.Linear module names, e.g. 'layers.*')")
    if any(isinstance(m, VariantLayer) for m in model.modules()):
        raise ConfigError("this model is already adapted; call adaptation.remove() first or use a fresh model")
    names = match_targets(model, targets, cls.Layer.wraps)
    saved_names = match_modules_to_save(model, modules_to_save, names)
    cfg = cls.Config.from_kwargs(config)
    modules = {n: model.get_submodule(n) for n in names}
    shapes = {n: cls.Layer.target_shape(m) for n, m in modules.items()}
    cfg.validate(shapes)
    check_adaptation(cls, cfg, shapes, seed)  # refuse, before allocating, an adapter larger than the memory limit

    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)

    var = cls(cfg)
    # each layer draws from its own seeded stream (workbench.rng), private to this thread: concurrent adapt() calls
    # give the same tensors as a solo one. The global generator is seeded too, with the same seed, for code that
    # draws without a generator (a plug-in variant's nn.init call); that part is only as safe as torch's global.
    with torch.random.fork_rng(devices=[]):
        with rng.seeded(_layer_seed(seed, -1)):
            torch.manual_seed(_layer_seed(seed, -1))
            shared = cls.SharedModule(cfg, shapes, seed) if cls.SharedModule is not None else None
        device = _device_of(next(iter(modules.values())))
        if shared is not None:
            shared.to(device)
        layers = {}
        for i, (n, m) in enumerate(modules.items()):
            with rng.seeded(_layer_seed(seed, i)):
                torch.manual_seed(_layer_seed(seed, i))
                layer = cls.Layer(m, cfg, shared=shared, name=n)
            layer.to(device).train(m.training)  # a fresh module is in training mode; follow the one it wraps
            layers[n] = layer
    for n, layer in layers.items():
        _set_module(model, n, layer)
    saved = {n: model.get_submodule(n) for n in saved_names}
    for module in saved.values():
        module.requires_grad_(True)
    return Adaptation(model, var, layers, shared, list([targets] if isinstance(targets, str) else targets),
                      modules, requires_grad, seed, saved)


def load_adaptation(model: nn.Module, path: str | os.PathLike) -> Adaptation:
    """Rebuild an adaptation saved by :meth:`Adaptation.save` on a fresh copy of its model."""
    path = Path(path)
    meta_file, tensor_file = path / "adaptation.json", path / "adapter.safetensors"
    if not meta_file.exists() or not tensor_file.exists():
        raise FileNotFoundError(f"{path} is not a saved adaptation (needs adaptation.json and adapter.safetensors)")
    meta = json.loads(meta_file.read_text())
    ad = adapt(model, meta["variant"], meta["targets"], seed=meta["seed"],
               modules_to_save=meta.get("modules_to_save", []), **meta["config"])
    if ad.module_names != meta["modules"]:
        raise ConfigError(f"the model's target layers {ad.module_names} differ from the saved ones {meta['modules']}")
    for name, changes in (meta.get("layer_configs") or {}).items():
        ad.rebuild_layer(name, changes)  # a layer with its own rank or α (a PEFT rank_pattern) before its tensors
    state = load_file(str(tensor_file), device=str(next(ad.model.parameters()).device))
    by_layer: dict[str, dict[str, torch.Tensor]] = {n: {} for n in ad.module_names}
    shared_state = {}
    saved_state: dict[str, dict[str, torch.Tensor]] = {n: {} for n in ad.modules_to_save}
    for key, value in state.items():
        if key.startswith(SAVED_PREFIX):
            rest = key[len(SAVED_PREFIX):]
            owners = [n for n in ad.modules_to_save if rest.startswith(n + ".")]
            if not owners:
                raise ConfigError(f"{tensor_file}: tensor {key!r} belongs to no module of modules_to_save")
            owner = max(owners, key=len)
            saved_state[owner][rest[len(owner) + 1:]] = value
            continue
        if key.startswith("shared."):
            shared_state[key[len("shared."):]] = value
            continue
        owners = [n for n in ad.module_names if key.startswith(n + ".")]
        if not owners:
            raise ConfigError(f"{tensor_file}: tensor {key!r} belongs to no adapted layer")
        owner = max(owners, key=len)
        by_layer[owner][key[len(owner) + 1:]] = value
    if ad.shared is not None:
        ad.shared.load_state_dict(shared_state, strict=False)
    for n, layer in ad.named_layers():
        layer.load_adapter_state(by_layer[n])
    for n, module in ad.saved_modules():
        module.load_state_dict(saved_state[n])  # strict: a missing tensor is an error, not a silent default
    return ad
