"""The recipe interface and its registry."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..options import Options

_RECIPES: dict[str, type[Recipe]] = {}


@dataclass
class RecipeConfig(Options):
    """Base of every recipe's declared options (fields with :func:`~workbench.options.param`), like a variant's
    config: validation, forms, CLI flags and docs come from the declaration. AdamW has none."""

    owner: ClassVar[str] = "recipe"


class Recipe:
    """Builds the optimizer; ``step(closure)`` runs one update (override for perturb-then-step methods).

    ``closure()`` recomputes the loss and gradients and returns the loss; plain recipes call it once.
    """

    name: ClassVar[str] = "?"
    paper: ClassVar[str] = ""
    Config: ClassVar[type[RecipeConfig]] = RecipeConfig

    def __init__(self, adaptation, lr: float, weight_decay: float = 0.0, **options):
        self.config = self.Config.from_kwargs(options, self.name)
        self.config.validate()
        self.adaptation = adaptation
        # torch's optimizers refuse a NaN/inf rate at construction; build with a placeholder and apply the rate
        # afterwards, so the run really diverges and train() reports it instead of crashing before step one
        self.lr = lr if math.isfinite(lr) else 1.0
        self.weight_decay = weight_decay
        self.optimizer = self.build()
        if not math.isfinite(lr):
            self.lr = lr
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def build(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        loss = closure()
        self.optimizer.step()
        return loss


def register_recipe(name: str, paper: str = "") -> Callable[[type[Recipe]], type[Recipe]]:
    def deco(cls: type[Recipe]) -> type[Recipe]:
        cls.name, cls.paper = name, paper
        _RECIPES[name] = cls
        return cls

    return deco


def recipe_names() -> list[str]:
    return list(_RECIPES)


def get_recipe(name: str) -> type[Recipe]:
    if name not in _RECIPES:
        hint = difflib.get_close_matches(name, list(_RECIPES), n=3)
        raise ConfigError(f"unknown recipe {name!r}" + (f"; did you mean {', '.join(hint)}?" if hint else "")
                          + f" Known: {', '.join(_RECIPES)}.")
    return _RECIPES[name]
