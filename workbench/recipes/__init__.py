"""Optimizer-level methods: how an adapter is trained rather than its shape.

A :class:`Recipe` builds the optimizer for an :class:`~workbench.adapt.Adaptation` and may wrap the step
(perturb-then-step methods). ``adamw`` is the default for every variant; ``allora``, ``lora-pro``, ``altlora``,
``altlora+``, ``lora-ggpo`` and ``lora-mgpo`` train any variant whose layers have LoRA factors.

``workbench.recipes`` is this package; calling it, ``workbench.recipes()``, lists the registered recipes
(:func:`recipe_infos`).
"""

import sys
import types

from . import adamw, allora, altlora, ggpo, lora_pro  # noqa: F401  (registration order: adamw first)
from .base import (  # noqa: F401
    FactorPair,
    Recipe,
    RecipeConfig,
    RecipeInfo,
    factor_pairs,
    get_recipe,
    recipe_infos,
    recipe_names,
    register_recipe,
    validate_options,
)


class _CallablePackage(types.ModuleType):
    """``workbench.recipes()`` is :func:`recipe_infos`: one :class:`RecipeInfo` per recipe (name, paper, summary,
    notes, config class, needs_factors)."""

    def __call__(self):
        return recipe_infos()


sys.modules[__name__].__class__ = _CallablePackage
