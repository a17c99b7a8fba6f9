"""The recipe interface and its registry.

A recipe changes *how* an adapter is trained, not its shape: it builds the optimizer (:meth:`Recipe.build`) and may
wrap the step (:meth:`Recipe.step`, for perturb-then-step methods). Its settings are a :class:`RecipeConfig`
(fields declared with :func:`~workbench.options.param`, like a variant's config), validated with named
:class:`~workbench.errors.ConfigError` messages; ``train(..., recipe="altlora", recipe_options={...})`` passes them.

Recipes for low-rank adapters (``needs_factors``) never ask for a variant by name: they ask every layer for
``factors()`` and find, by autograd, the two trainable tensors of the layer that the factors are scalar multiples of
(:func:`factor_pairs`); a layer without such factors is refused with a ConfigError that says why.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..options import Options

_RECIPES: dict[str, type[Recipe]] = {}


@dataclass
class RecipeConfig(Options):
    """Base of every recipe's declared options (fields with :func:`~workbench.options.param`), like a variant's
    config: validation, forms, CLI flags and docs come from the declaration. AdamW has none."""

    owner: ClassVar[str] = "recipe"


@dataclass
class FactorPair:
    """One adapted layer seen as LoRA: ``ΔW = scale · B A`` with ``B`` (out × r) and ``A`` (r × in) trainable
    tensors of the layer (``factors() == (c_B·B, c_A·A)``, ``scale = c_B·c_A``)."""

    name: str
    layer: Any
    B: torch.nn.Parameter
    A: torch.nn.Parameter
    scale: float


def _scalar_multiple(f: torch.Tensor, layer, name: str, side: str, recipe: str) -> tuple[torch.nn.Parameter, float]:
    """The trainable tensor ``p`` of ``layer`` and the constant ``c`` with ``f == c·p`` (checked by a
    vector-Jacobian product, so it holds at B = 0 too); otherwise a ConfigError saying why."""
    own = [(n, p) for n, p in layer.named_parameters() if p.requires_grad and not n.startswith("base.")]
    for pname, p in own:
        if p.shape != f.shape or not f.requires_grad:
            continue
        v = torch.randn(f.shape, generator=torch.Generator().manual_seed(0)).to(f)
        grads = torch.autograd.grad(f, [q for _, q in own], v, retain_graph=True, allow_unused=True)
        by_name = dict(zip([n for n, _ in own], grads))
        gp = by_name[pname]
        others = [n for n, g in by_name.items() if n != pname and g is not None and bool(g.abs().max() > 0)]
        if gp is None or others:
            continue
        c = float((gp * v).sum() / (v * v).sum())
        if c != 0 and torch.allclose(gp, c * v, rtol=1e-5, atol=1e-7) and torch.allclose(
                f.detach(), c * p.detach(), rtol=1e-5, atol=1e-6):
            return p, c
    raise ConfigError(f"{recipe}: layer {name} ({layer.config.variant}) has factors(), but its {side} factor is not a "
                      "constant multiple of one trainable tensor of the layer (it mixes frozen bases, gates or shared "
                      f"tensors), so {recipe}'s update of B and A cannot be applied to it; use a LoRA-form variant "
                      "such as lora or rslora")


def factor_pairs(adaptation, recipe: str) -> list[FactorPair]:
    """Every adapted layer as a :class:`FactorPair`, or a ConfigError naming the first layer that is not one."""
    pairs = []
    for name, layer in adaptation.named_layers():
        with torch.enable_grad():
            f = layer.factors()
        if f is None:
            raise ConfigError(f"{recipe}: {adaptation.variant.name} has no low-rank factors (layer {name}'s factors() "
                              f"is None), and {recipe} updates the factors B and A of ΔW = s·B A; train it with "
                              "recipe='adamw' or choose a variant with factors() (lora, rslora, ...)")
        b, a = f
        if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
            raise ConfigError(f"{recipe}: layer {name}'s factors() are not (B [out, r], A [r, in])")
        pb, cb = _scalar_multiple(b, layer, name, "B", recipe)
        pa, ca = _scalar_multiple(a, layer, name, "A", recipe)
        if pb is pa:
            raise ConfigError(f"{recipe}: layer {name}'s B and A factors are the same tensor")
        pairs.append(FactorPair(name, layer, pb, pa, cb * ca))
    if not pairs:
        raise ConfigError(f"{recipe}: the adaptation has no adapted layers")
    return pairs


def other_parameters(adaptation, pairs: list[FactorPair]) -> list[torch.nn.Parameter]:
    """Trainable tensors that are not a pair's B or A (classification heads trained in full, ...): AdamW trains them."""
    taken = {id(t) for p in pairs for t in (p.B, p.A)}
    return [p for p in adaptation.parameters() if p.requires_grad and id(p) not in taken]


class Recipe:
    """Builds the optimizer; ``step(closure)`` runs one update (override for perturb-then-step methods).

    ``closure()`` recomputes the loss and gradients and returns the loss; plain recipes call it once. ``ctx`` is the
    loop's :class:`~workbench.events.StepContext` (``ctx.step`` is the step being taken) when run by ``train()``.
    ``records()`` returns what the recipe wants in the run at a probe step (``(module, key, value)`` rows and
    ``(module, name) -> tensor`` snapshots, logged under the probe name ``"recipe"``); ``close()`` undoes what the
    recipe attached to the layers (hooks, patched branches) when training ends.
    """

    name: ClassVar[str] = "?"
    paper: ClassVar[str] = ""
    #: one paragraph for people (docs, the Learn tab)
    summary: ClassVar[str] = ""
    #: what is simplified or could not be confirmed against the paper / official code
    notes: ClassVar[str] = ""
    #: the recipe updates low-rank factors and refuses layers without them
    needs_factors: ClassVar[bool] = False
    Config: ClassVar[type[RecipeConfig]] = RecipeConfig

    def __init__(self, adaptation, lr: float, weight_decay: float = 0.0, ctx=None, **options):
        self.config = self.Config.from_kwargs(options, self.name)
        self.config.validate()
        self.adaptation = adaptation
        self.ctx = ctx
        self.pairs = factor_pairs(adaptation, self.name) if self.needs_factors else []
        # torch's optimizers refuse a NaN/inf rate at construction; build with a placeholder and apply the rate
        # afterwards, so the run really diverges and train() reports it instead of crashing before step one
        self.lr = lr if math.isfinite(lr) else 1.0
        self.weight_decay = weight_decay
        self.optimizer = self.build()
        if not math.isfinite(lr):
            self.lr = lr
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    @property
    def step_index(self) -> int:
        """The 0-based step being taken: the loop's ``ctx.step`` inside ``train()``, else this recipe's own count."""
        if self.ctx is not None:
            return int(self.ctx.step)
        return getattr(self, "_own_steps", 0)

    def build(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        loss = closure()
        self.optimizer.step()
        self._count()
        return loss

    def _count(self) -> None:
        self._own_steps = getattr(self, "_own_steps", 0) + 1

    def records(self) -> tuple[list[tuple[str, str, float]], dict[tuple[str, str], torch.Tensor]]:
        return [], {}

    def close(self) -> None:
        """Detach hooks and patches from the layers (called by ``train()`` when the run ends)."""


@dataclass(frozen=True)
class RecipeInfo:
    """What ``workbench.recipes()`` lists: name, paper, summary, notes, the config class and whether the recipe
    needs low-rank factors."""

    name: str
    paper: str
    summary: str
    notes: str
    config: type[RecipeConfig]
    needs_factors: bool
    cls: type[Recipe]

    def fields(self) -> list[dict[str, Any]]:
        """The config's declared fields (name, type, default, range, help), as forms and docs read them."""
        return self.config.fields_info()


def register_recipe(name: str, paper: str = "") -> Callable[[type[Recipe]], type[Recipe]]:
    def deco(cls: type[Recipe]) -> type[Recipe]:
        if name in _RECIPES and _RECIPES[name] is not cls:
            raise ValueError(f"recipe {name!r} is registered twice")
        cls.name, cls.paper = name, paper
        if cls.Config is not RecipeConfig:
            cls.Config.owner = name
        _RECIPES[name] = cls
        return cls

    return deco


def recipe_names() -> list[str]:
    return list(_RECIPES)


def recipe_infos() -> list[RecipeInfo]:
    """One :class:`RecipeInfo` per registered recipe, in registration order (adamw first)."""
    return [RecipeInfo(c.name, c.paper, c.summary, c.notes, c.Config, c.needs_factors, c) for c in _RECIPES.values()]


def get_recipe(name: str) -> type[Recipe]:
    if name not in _RECIPES:
        hint = difflib.get_close_matches(name, list(_RECIPES), n=3)
        raise ConfigError(f"unknown recipe {name!r}" + (f"; did you mean {', '.join(hint)}?" if hint else "")
                          + f" Known: {', '.join(_RECIPES)}.")
    return _RECIPES[name]


def validate_options(recipe: str, options: dict[str, Any] | None) -> RecipeConfig:
    """The recipe's config from ``options`` (unknown keys and out-of-range values are named ConfigErrors)."""
    cls = get_recipe(recipe)
    cfg = cls.Config.from_kwargs(dict(options or {}), cls.name)
    cfg.validate()
    return cfg


class AdamWithOthers:
    """Shared helper: an AdamW over the tensors a factor recipe does not own, whose group dict is also a group of
    the recipe's optimizer, so the loop's learning-rate schedule reaches both."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, weight_decay: float):
        self.group = {"params": params, "lr": lr, "weight_decay": weight_decay}
        self.adam = torch.optim.AdamW([self.group], lr=lr, weight_decay=weight_decay, foreach=True) if params else None

    def step(self) -> None:
        if self.adam is not None:
            self.adam.step()
