"""Tasks: ``get(name, **options)`` and ``names()``.

``synthetic:<structure>`` (a known true ΔW), ``digits:<shift>`` (a tiny ViT on scikit-learn's digits) and
``text:classify`` (all-MiniLM-L6-v2 on any text classification data; ``text:sst2`` is its SST-2 preset). Each is a
:class:`~workbench.tasks.base.Task`.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from ..errors import ConfigError
from .base import Task
from .synthetic import STRUCTURES, SyntheticTask

__all__ = ["get", "names", "Task", "task_class", "option_names", "option_fields"]


def _digits() -> type[Task]:
    from .digits import DigitsTask  # imported on first use: it pulls in scikit-learn

    return DigitsTask


def _family() -> type[Task]:
    from .family import FamilyTask

    return FamilyTask


def _digits_family() -> type[Task]:
    from .digits_family import DigitsFamilyTask

    return DigitsFamilyTask


def _text() -> type[Task]:
    from .text import TextTask  # imported on first use: it pulls in transformers

    return TextTask


_FAMILIES: dict[str, tuple[Callable[[], type[Task]], tuple[str, ...]]] = {
    "synthetic": (lambda: SyntheticTask, STRUCTURES),
    "synthetic-family": (_family, ("path",)),
    "digits": (_digits, ("rotate", "invert", "classes", "continual")),
    "digits-family": (_digits_family, ("rotate",)),
    "text": (_text, ("sst2", "classify")),
}


def task_class(name: str) -> type[Task]:
    """The Task class behind ``name`` (``synthetic:*``, ``digits:*``, ``text:*``), without building a task."""
    family = str(name).partition(":")[0]
    if family not in _FAMILIES:
        get(name)  # raises the unknown-task error with suggestions
    return _FAMILIES[family][0]()


def option_names(name: str) -> list[str]:
    """The keyword options ``get(name, ...)`` accepts, e.g. ``dim``, ``noise``, ``layout`` for synthetic tasks."""
    cls = task_class(name)
    if cls.option_class is not None:
        return cls.option_class.field_names()
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self and the kind
    return [p.name for p in params if p.kind is not p.VAR_KEYWORD]


def option_fields(name: str) -> list[dict]:
    """The declared options of task ``name`` (one dict per field: name, type, default, range, help), for forms,
    CLI flags and docs; empty for a task that declares none."""
    cls = task_class(name)
    return cls.option_class.fields_info() if cls.option_class is not None else []


def names() -> list[str]:
    return [f"{family}:{kind}" for family, (_, kinds) in _FAMILIES.items() for kind in kinds]


def get(name: str, **options) -> Task:
    """The task called ``name`` built with ``options``; unknown names raise :class:`ConfigError` with hints."""
    if isinstance(name, Task):
        return name
    family, _, kind = str(name).partition(":")
    if family not in _FAMILIES or kind not in _FAMILIES[family][1]:
        hint = difflib.get_close_matches(str(name), names(), n=3, cutoff=0.5)
        raise ConfigError(f"unknown task {name!r}" + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "")
                          + f" Known: {', '.join(names())}.")
    factory = _FAMILIES[family][0]()
    try:
        return factory(kind, **options)
    except TypeError as exc:  # an unknown keyword option
        raise ConfigError(f"{name}: {exc}".replace(".__init__()", "")
                          + f"; valid options: {', '.join(option_names(name))}") from exc
