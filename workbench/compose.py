"""``compose()``: put adaptations trained apart on one model, θ = θ0 + φ_a + φ_b (+ stacked adapters).

The point of Litschko, Vulić & Glavaš (COLING 2022) and of Ansell et al. (ACL 2022): a language (domain) update
and a task update, each learned on its own data, combine at test time for the pair that neither saw. Two ways an
update combines, decided by its layers' declared contract (``workbench.variant.VariantLayer``), never by name:

* **added**: a layer whose update is a ΔW added to W (``linear_delta`` and ``has_weight``: SFT's sparse masks,
  LoRA, full fine-tuning, VeRA, ...). Each part's ``update()`` (the change from the pretrained W0, so PiSSA's
  re-based factors count right) is summed into the model's weights: W = W0 + Σ_parts ΔW_part. Modules a part
  trained in full (``modules_to_save``, e.g. a classifier head) are differences too: θ0 + Σ (θ_part − θ0).
* **stacked**: a layer that is a function of its module's output alone (``stacks``: bottleneck adapters). The
  parts' layers nest on the module in list order, so ``compose(model, [domain, task])`` computes
  task(domain(h)), MAD-X's ``Stack(lang, task)``.

Anything else is refused with a :class:`ConfigError` that names the part, the module and why: an update that is
not a ΔW added to W (DoRA's magnitude, TLoRA's transform, ``full`` with a trained bias) or that depends on the input
without acting on the module's output alone (FoRA); a part whose modules or shapes the model lacks; an in-memory
part trained on different base weights; a merged part. Added updates are applied before stacked ones (sums
commute; the stacked wrappers then sit around modules whose weights already hold the sums).

A part is an :class:`~workbench.adapt.Adaptation`, a :class:`~workbench.runs.Run` holding one, or the folder of a
saved adaptation (loaded onto a copy of ``model``). :meth:`Composition.remove` restores the model exactly.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapt import Adaptation, _set_module, load_adaptation
from .errors import ConfigError
from .variant import VariantLayer

__all__ = ["compose", "Composition", "composition_kind"]


def composition_kind(layer: VariantLayer) -> str | None:
    """``"add"`` (a ΔW added to W), ``"stack"`` (acts on the module's output alone) or ``None`` (neither)."""
    if layer.stacks:
        return "stack"
    if layer.linear_delta and layer.has_weight:
        return "add"
    return None


def _why_not(layer: VariantLayer) -> str:
    if not layer.has_weight:
        return ("its update depends on the layer's input (no weight represents it) and it does not act on the module's "
                "output alone, so it can neither be added nor stacked")
    return ("its update is not a ΔW added to W (linear_delta is False: a rescaled, transformed or affine update), so "
            "two of them do not sum to θ0 + φ_a + φ_b")


@dataclass
class Composition:
    """The composed model and how it was built. ``parts`` holds one dict per part (``label``, ``variant``,
    ``kind`` per module); :meth:`remove` puts the original modules and weights back and returns the model."""

    model: nn.Module
    parts: list[dict[str, Any]] = field(default_factory=list)
    _weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _modules: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def remove(self) -> nn.Module:
        """Undo the composition exactly: the original module objects and parameter values come back."""
        for name, module in self._modules.items():
            _set_module(self.model, name, module)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self._weights.items():
                params[name].copy_(value)
        self._modules.clear()
        self._weights.clear()
        return self.model


def _label(item: Any, i: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"part {i} ({item})"
    owner = getattr(item, "adaptation", item)
    name = getattr(getattr(owner, "variant", None), "name", None)
    return f"part {i} ({name})" if name else f"part {i}"


def _as_adaptation(item: Any, pristine: nn.Module, label: str) -> Adaptation:
    if isinstance(item, Adaptation):
        return item
    if isinstance(getattr(item, "adaptation", None), Adaptation):  # a Run
        return item.adaptation
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not (path / "adaptation.json").exists():
            raise ConfigError(f"compose: {label}: {path} is not a saved adaptation (needs adaptation.json and "
                              "adapter.safetensors)")
        return load_adaptation(copy.deepcopy(pristine), path)
    raise ConfigError(f"compose: {label} is a {type(item).__name__}; give an Adaptation, a Run or the folder of a "
                      "saved adaptation")


def _check_base(ad: Adaptation, label: str, model: nn.Module) -> None:
    """An in-memory part must have been trained on the model's weights: W0 of every added layer agrees."""
    modules = dict(model.named_modules())
    for name, layer in ad.named_layers():
        if composition_kind(layer) != "add" or name not in modules or not isinstance(modules[name], nn.Linear):
            continue
        w, w0 = modules[name].weight, layer.pretrained_weight()
        if w.shape == w0.shape and not torch.allclose(w0.detach().to(w), w.detach(), atol=1e-5, rtol=1e-4):
            raise ConfigError(f"compose: {label} was trained on other base weights: its W0 of {name} differs from the "
                              "model's; compose updates of one pretrained model (θ = θ0 + φ_a + φ_b)")


def compose(model: nn.Module, adaptations: Iterable[Any]) -> Composition:
    """Compose ``adaptations`` (Adaptations, Runs or saved folders, in order) on ``model``, the pretrained model they
    were all trained from, in place; returns the :class:`Composition` (``.model``, ``.remove()``)."""
    items = list(adaptations)
    if not items:
        raise ConfigError("compose: adaptations is empty; give at least one Adaptation, Run or saved folder")
    if any(isinstance(m, VariantLayer) for m in model.modules()):
        raise ConfigError("compose: the model is adapted already; pass the pretrained model (a fresh task.model()) "
                          "and the adaptations to put on it")
    pristine = model
    labels = [_label(item, i) for i, item in enumerate(items)]
    ads = [_as_adaptation(item, pristine, label) for item, label in zip(items, labels)]

    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    plan: list[dict[str, Any]] = []
    for ad, label in zip(ads, labels):
        if any(layer.merged for _, layer in ad.named_layers()):
            raise ConfigError(f"compose: {label} is merged; unmerge() it first so its update can be read apart")
        kinds = {}
        for name, layer in ad.named_layers():
            kind = composition_kind(layer)
            if kind is None:
                raise ConfigError(f"compose: {label} cannot be composed: {ad.variant.name} on {name}: "
                                  f"{_why_not(layer)}")
            target = modules.get(name)
            if target is None:
                raise ConfigError(f"compose: {label} adapts {name!r}, which the model does not have")
            if kind == "add":
                shape = tuple(layer.update().shape)
                if not isinstance(target, nn.Linear) or tuple(target.weight.shape) != shape:
                    got = tuple(target.weight.shape) if isinstance(target, nn.Linear) else type(target).__name__
                    raise ConfigError(f"compose: {label} changes {name} as a {shape[0]}x{shape[1]} weight, but the "
                                      f"model's {name} is {got}: different target shapes")
            else:
                want, got = type(layer).target_shape(layer.base), type(layer).target_shape(target)
                if not isinstance(target, layer.wraps) or want != got:
                    raise ConfigError(f"compose: {label} stacks an adapter on {name} of width {want[0]}, but the "
                                      f"model's {name} has width {got[0]}: different target shapes")
            kinds[name] = kind
        for name, module in ad.saved_modules():
            for key, value in module.state_dict().items():
                full = f"{name}.{key}"
                if full not in params or params[full].shape != value.shape:
                    raise ConfigError(f"compose: {label} trained {name} in full, but the model's {full} is "
                                      f"{tuple(params[full].shape) if full in params else 'missing'}, not "
                                      f"{tuple(value.shape)}: different target shapes")
        if ad.model is not model:
            _check_base(ad, label, model)
        plan.append({"label": label, "variant": ad.variant.name, "kinds": kinds, "adaptation": ad})

    comp = Composition(model)
    with torch.no_grad():
        # sums first: every added ΔW and every full-trained module's difference from the pristine value
        sums: dict[str, torch.Tensor] = {}
        for step in plan:
            ad = step["adaptation"]
            for name, kind in step["kinds"].items():
                if kind == "add":
                    key = f"{name}.weight"
                    update = ad.layer(name).update().detach().to(params[key].device, torch.float32)
                    sums[key] = sums[key] + update if key in sums else update
            for name, module in ad.saved_modules():
                for key, value in module.state_dict().items():
                    full = f"{name}.{key}"
                    diff = value.detach().to(params[full].device, torch.float32) - params[full].detach().float()
                    sums[full] = sums[full] + diff if full in sums else diff
        for key, total in sums.items():
            comp._weights[key] = params[key].detach().clone()
            params[key].add_(total.to(params[key].dtype))
        # then stacks, in list order: each new layer wraps what the module is now (a previous part's adapter)
        for step in plan:
            ad = step["adaptation"]
            for name, kind in step["kinds"].items():
                if kind != "stack":
                    continue
                source = ad.layer(name)
                current = model.get_submodule(name)
                comp._modules.setdefault(name, current)
                layer = type(source)(current, source.config, shared=source.shared, name=name)
                layer.load_adapter_state({k: v.detach().clone() for k, v in source.adapter_state().items()})
                device = next(iter(current.parameters()), torch.empty(0)).device
                layer.to(device).train(current.training).requires_grad_(False)
                _set_module(model, name, layer)
    comp.parts = [{"label": s["label"], "variant": s["variant"], "kinds": dict(s["kinds"])} for s in plan]
    return comp
