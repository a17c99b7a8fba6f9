"""Optimizer-level methods: how an adapter is trained rather than its shape.

A :class:`Recipe` builds the optimizer for an :class:`~workbench.adapt.Adaptation` and may wrap the step
(perturb-then-step methods). ``adamw`` is the default for every variant.
"""

from . import adamw  # noqa: F401
from .base import Recipe, get_recipe, recipe_names, register_recipe  # noqa: F401
