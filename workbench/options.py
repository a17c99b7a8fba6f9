"""One way to declare options: dataclass fields declared with :func:`param` (default, allowed range, help).

Every kind of settings in the workbench is an :class:`Options` subclass: a variant's config
(:class:`~workbench.variant.VariantConfig`), the training loop's :class:`~workbench.settings.TrainSettings`, a
recipe's config and a task's options. The declaration drives everything else, so it is written once:

* validation with errors that name the field, the value and the allowed range (:meth:`Options.validate`);
* parsing text from the CLI (``--set r=8``) and the dashboard's forms into typed values (:func:`parse_value`);
* the dashboard's generated forms and the docs tables (:meth:`Options.fields_info`, :func:`allowed`);
* the run record (:meth:`Options.to_dict`).

Bounds may be functions of a layer's ``(out, in)`` shape (``high=min`` for a rank), checked against every target.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ConfigError

__all__ = ["param", "Options", "parse_value", "allowed", "Shape"]

Shape = tuple[int, int]  # (out_features, in_features) of one target nn.Linear
Bound = float | int | Callable[[Shape], float] | None


def param(default: Any, *, low: Bound = None, high: Bound = None, choices: Iterable[Any] | None = None,
          low_open: bool = False, help: str = "") -> Any:
    """Declare an option with its allowed range.

    ``low``/``high`` may be numbers or functions of a layer's ``(out, in)`` shape (e.g. ``high=min`` for a rank);
    shape-dependent bounds are checked against every target layer. ``low_open`` excludes ``low`` itself
    (``lr > 0``). ``choices`` restricts a field to a finite set. A field whose annotation admits ``None``
    (``eval_every: int | None``) accepts ``None`` ("not set": the owner picks a value).
    """
    meta = {"low": low, "high": high, "choices": tuple(choices) if choices is not None else None,
            "low_open": low_open, "help": help}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _bound(b: Bound, shape: Shape | None) -> float | None:
    if b is None:
        return None
    if callable(b):
        return None if shape is None else b(shape)
    return b


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _field_type(f: dataclasses.Field, owner: type, default: Any) -> tuple[str, bool]:
    """(``int`` | ``float`` | ``bool`` | ``str`` | other, whether None is allowed) from the annotation."""
    try:
        hint = typing.get_type_hints(owner).get(f.name, f.type)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved: fall back to its text
        hint = f.type
    if isinstance(hint, str):
        parts = [p.strip() for p in hint.split("|")]
        nullable = "None" in parts
        parts = [p for p in parts if p != "None"]
        t = parts[0] if len(parts) == 1 else "|".join(parts)
    else:
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        nullable = type(None) in args
        real = [a for a in args if a is not type(None)]
        t = getattr(real[0], "__name__", str(real[0])) if len(real) == 1 else "|".join(map(str, real))
    if t not in ("bool", "int", "float", "str"):
        t = type(default).__name__ if default is not None else t
    return t, nullable or default is None


@dataclass
class Options:
    """Base class of every declared set of options. Subclasses add fields declared with :func:`param`.

    ``owner`` names the thing configured in error messages (``lora``, ``train``, ``text:sst2``).
    """

    owner: ClassVar[str] = "?"

    def __post_init__(self) -> None:
        # numpy's scalars (a seed from np.arange, a rate from np.logspace) become Python numbers, so torch, json and
        # the run record see plain ints and floats
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, numbers.Number) and type(value) not in (bool, int, float):
                if isinstance(value, numbers.Integral):
                    setattr(self, f.name, int(value))
                elif isinstance(value, numbers.Real):
                    setattr(self, f.name, float(value))

    @classmethod
    def fields_info(cls) -> list[dict[str, Any]]:
        """One dict per field: name, type, nullable, default, low, high, choices, low_open, help."""
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
            kind, nullable = _field_type(f, cls, default)
            meta = {"low": None, "high": None, "choices": None, "low_open": False, "help": "", **f.metadata}
            out.append({"name": f.name, "type": kind, "nullable": nullable, "default": default, **meta})
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], owner: str | None = None) -> Options:
        """Build from keyword values, turning unknown keys into a :class:`ConfigError` with suggestions.
        ``owner`` names the configured thing in messages when it is not the class's (a task's name)."""
        cls.check_keys(kwargs, owner)
        out = cls(**kwargs)
        if owner is not None:
            out.owner = owner
        return out

    @classmethod
    def check_keys(cls, kwargs: dict[str, Any], owner: str | None = None) -> None:
        names = cls.field_names()
        for key in kwargs:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=3)
                raise ConfigError(
                    f"{owner or cls.owner}: unknown {cls._kind()} key {key!r}"
                    + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "")
                    + f" Valid keys: {', '.join(names) or '(none)'}.")

    @classmethod
    def from_strings(cls, values: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
        """Typed values from text (CLI flags, form cells): ``{"r": "8"}`` → ``{"r": 8}``; unknown keys and
        unparsable values are :class:`ConfigError` naming ``owner`` (default: the class's). Non-string values pass
        through unchanged."""
        cls.check_keys(values, owner)
        infos = {f["name"]: f for f in cls.fields_info()}
        return {k: parse_value(infos[k], v, owner or cls.owner) if isinstance(v, str) else v
                for k, v in values.items()}

    @classmethod
    def _kind(cls) -> str:
        return "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Options:
        self.check_keys(changes)
        return dataclasses.replace(self, **changes)

    def validate(self, shapes: dict[str, Shape] | None = None) -> None:
        """Check every field against its declared type and range, for every target layer shape.

        Raises :class:`ConfigError` like
        ``lora: r=0 is invalid; r must be an integer in [1, 384] for layer encoder.0.query (384x384)``.
        """
        shapes = shapes or {}
        for info in self.fields_info():
            name, value = info["name"], getattr(self, info["name"])
            if value is None and info["nullable"]:
                continue
            self._check_type(info, value)
            if info["choices"] is not None and value not in info["choices"]:
                raise ConfigError(f"{self.owner}: {name}={value!r} is invalid; {name} must be one of "
                                  f"{', '.join(map(repr, info['choices']))}")
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise ConfigError(f"{self.owner}: {name}={value!r} is invalid; {name} must be finite")
                shape_dependent = callable(info["low"]) or callable(info["high"])
                if shape_dependent and shapes:
                    for layer, shape in shapes.items():
                        self._check_range(info, value, layer, shape)
                else:
                    self._check_range(info, value, None, None)
        self.check(shapes)

    def check(self, shapes: dict[str, Shape]) -> None:
        """Cross-field checks a subclass adds (e.g. ``init_r >= target_r``); raise :class:`ConfigError`."""

    def _check_type(self, info: dict, value: Any) -> None:
        kind, name = info["type"], info["name"]
        ok = {  # numbers.Integral / Real: numpy's integers and floats are numbers too (a seed from np.arange)
            "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
            "float": isinstance(value, numbers.Real) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }.get(kind, True)
        if not ok:
            article = "an" if kind == "int" else "a"
            raise ConfigError(f"{self.owner}: {name}={value!r} is invalid; {name} must be {article} {kind}")

    def _check_range(self, info: dict, value: float, layer: str | None, shape: Shape | None) -> None:
        low, high = _bound(info["low"], shape), _bound(info["high"], shape)
        too_low = low is not None and (value <= low if info["low_open"] else value < low)
        too_high = high is not None and value > high
        if not (too_low or too_high):
            return
        kind = "an integer" if info["type"] == "int" else "a number"
        lo = "(-inf" if low is None else ("(" if info["low_open"] else "[") + _fmt(low)
        hi = "inf)" if high is None else _fmt(high) + "]"
        where = f" for layer {layer} ({shape[0]}x{shape[1]})" if layer is not None and shape else ""
        raise ConfigError(f"{self.owner}: {info['name']}={value!r} is invalid; {info['name']} must be {kind} "
                          f"in {lo}, {hi}{where}")


# ------------------------------------------------------------------------------------------ text <-> values


def _describe_bound(b) -> str | None:
    if b is None:
        return None
    if callable(b):
        return "min(out, in)" if b is min else "depends on the layer"
    return f"{b:g}" if isinstance(b, float) else str(b)


def allowed(info: dict) -> str:
    """A short human description of a field's type and range (forms, docs, error messages)."""
    if info["choices"] is not None:
        text = "one of " + ", ".join(map(str, info["choices"]))
    elif info["type"] == "bool":
        text = "true or false"
    elif info["type"] in ("int", "float"):
        lo, hi = _describe_bound(info["low"]), _describe_bound(info["high"])
        kind = "integer" if info["type"] == "int" else "number"
        left = "(" if info["low_open"] else "["
        text = f"{kind} in {left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
    else:
        text = info["type"]
    return text + (" or none" if info.get("nullable") else "")


def parse_value(info: dict, text: Any, owner: str = "?") -> Any:
    """The typed value of one field from text (the one parser for CLI flags and dashboard forms).

    ``"none"`` or an empty cell gives ``None`` for a field that allows it. Raises :class:`ConfigError` naming the
    field and what it allows; ranges are checked later by :meth:`Options.validate`.
    """
    name, kind = info["name"], info["type"]
    raw = str(text).strip()
    if info.get("nullable") and raw.lower() in ("", "none", "null"):
        return None
    try:
        if kind == "int":
            value = float(raw)
            if not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            value = float(raw)
            if math.isnan(value):
                raise ValueError
            return value
        if kind == "bool":
            if raw.lower() in ("true", "1", "yes", "on"):
                return True
            if raw.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
    except ValueError:
        raise ConfigError(f"{owner}: {name}={raw!r} is invalid; {name} must be {allowed(info)}") from None
    return raw
