"""Config forms generated from a variant's config dataclass: one row per field with its default and allowed
range, parsed back into typed values with errors that name the field; and task options typed as key=value pairs."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..errors import ConfigError
from ..options import allowed, parse_value
from ..variant import get_variant

COLUMNS = ["field", "value", "allowed", "help"]


def config_table(variant: str) -> pd.DataFrame:
    """The editable form of ``variant``'s config: its fields with the paper's defaults."""
    infos = get_variant(variant).Config.fields_info()
    return pd.DataFrame([{"field": f["name"], "value": str(f["default"]), "allowed": allowed(f),
                          "help": f.get("help", "")} for f in infos], columns=COLUMNS)


def parse_config(variant: str, table: pd.DataFrame | list | None) -> dict[str, Any]:
    """Typed config values from the edited form (unchanged defaults included). Raises :class:`ConfigError`."""
    infos = {f["name"]: f for f in get_variant(variant).Config.fields_info()}
    if table is None:
        return {}
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table, columns=COLUMNS)
    out = {}
    for _, row in df.iterrows():
        name = str(row["field"]).strip()
        if name not in infos:
            raise ConfigError(f"{variant}: unknown config key {name!r}; valid keys: {', '.join(infos)}")
        out[name] = parse_value(infos[name], row["value"], variant)
    return out


def parse_number(name: str, text: Any, kind: type = float, low: float | None = None, high: float | None = None):
    """A number from a text or number box, or a :class:`ConfigError` naming the box and its range."""
    try:
        value = float(str(text).strip())
        if kind is int:
            if not value.is_integer():
                raise ValueError
            value = int(value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={text!r} is invalid; {name} must be {what}"
                          + (f" in [{low:g}, {high:g}]" if low is not None and high is not None else "")) from None
    if (low is not None and value < low) or (high is not None and value > high) or value != value:
        raise ConfigError(f"{name}={value!r} is invalid; {name} must be in [{low:g}, {high:g}]")
    return value


def _literal(raw: str) -> Any:
    """A task option's value: an integer, a number, true/false, or else the text itself."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def parse_task_options(task: str, text: Any) -> dict[str, Any]:
    """``layout=parallel, noise=0.1`` as ``{"layout": "parallel", "noise": 0.1}``; the task itself then checks the
    names and ranges (an unknown option or a value out of range is a :class:`ConfigError` from ``tasks.get``)."""
    out: dict[str, Any] = {}
    for piece in str(text or "").split(","):
        if not piece.strip():
            continue
        key, sep, raw = (part.strip() for part in piece.partition("="))
        if not sep or not key.isidentifier() or not raw:
            raise ConfigError(f"{task}: task option {piece.strip()!r} is invalid; write key=value pairs separated by "
                              f"commas, e.g. 'layout=parallel, noise=0.1'")
        out[key] = _literal(raw)
    return out
