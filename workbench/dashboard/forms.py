"""Forms generated from any :class:`~workbench.options.Options` declaration (a variant's config, the training
settings, a task's options): one row per field with its value, the allowed range and the help text, optionally the
layer the value came from (default, task, preset, explicit); parsed back with the one text parser
(:meth:`Options.from_strings`), so a form cell and a CLI flag accept the same text and fail with the same message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..errors import ConfigError
from ..options import Options, allowed

COLUMNS = ["field", "value", "allowed", "help"]
SOURCE = "from"  # the extra column that says where a shown value came from (resolve()'s sources), next to the value


def cell(value: Any) -> str:
    """A value as the text a form shows and :func:`~workbench.options.parse_value` reads back."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def options_table(option_class: type[Options] | None, values: dict[str, Any] | None = None,
                  sources: dict[str, str] | None = None, first: Sequence[str] = ()) -> pd.DataFrame:
    """The editable form of ``option_class``: every declared field with ``values`` (else its declared default), what
    it allows and its help; with ``sources`` a ``from`` column says where each value came from. Fields named in
    ``first`` lead (the commonly edited ones), the rest follow in declaration order."""
    columns = COLUMNS[:2] + ([SOURCE] if sources is not None else []) + COLUMNS[2:]
    if option_class is None:
        return pd.DataFrame([], columns=columns)
    values, order = values or {}, list(first)
    rows = []
    infos = option_class.fields_info()
    for info in sorted(infos, key=lambda f: order.index(f["name"]) if f["name"] in order else len(order)):
        name = info["name"]
        row = {"field": name, "value": cell(values.get(name, info["default"])), "allowed": allowed(info),
               "help": info.get("help", "")}
        if sources is not None:
            row[SOURCE] = sources.get(name, "default")
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def table_values(table: pd.DataFrame | list | None) -> dict[str, str]:
    """``{field: text}`` from an edited form (a DataFrame, or the list of rows Gradio may send)."""
    if table is None:
        return {}
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    if df.empty:
        return {}
    if "field" not in df.columns:  # rows without a header: field and value are the first two cells
        df = df.rename(columns={df.columns[0]: "field", df.columns[1]: "value"})
    return {str(f).strip(): "" if v is None else str(v) for f, v in zip(df["field"], df["value"], strict=True)}


def parse_options(option_class: type[Options] | None, table: pd.DataFrame | list | None,
                  owner: str | None = None) -> dict[str, Any]:
    """Typed values of every row of an edited form, through :meth:`Options.from_strings`; an unknown field or text
    that is not a value of its field is a :class:`ConfigError` naming ``owner``, the field and what it allows.
    Ranges are checked by whoever uses the values (``resolve()``, ``adapt()``, ``tasks.get``)."""
    texts = table_values(table)
    if option_class is None:
        if texts:
            raise ConfigError(f"{owner or '?'}: takes no options; got {', '.join(texts)}")
        return {}
    return option_class.from_strings(texts, owner)


def changed_options(option_class: type[Options] | None, table: pd.DataFrame | list | None, shown: dict[str, Any],
                    owner: str | None = None) -> dict[str, Any]:
    """The typed values of the rows the user changed from ``shown`` (what the form was filled with; a field missing
    from ``shown`` compares with its declared default). Untouched rows are left out, so the caller passes only real
    edits as explicit and every other value keeps the layer it came from."""
    values = parse_options(option_class, table, owner)
    if option_class is None:
        return {}
    defaults = {f["name"]: f["default"] for f in option_class.fields_info()}
    return {k: v for k, v in values.items() if not _same(v, shown.get(k, defaults.get(k)))}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (a != a and b != b)  # NaN equals NaN here: an untouched 'nan' is no edit
    return a == b


def parse_number(name: str, text: Any, kind: type = float, low: float | None = None, high: float | None = None):
    """A number from a box that is not a declared field (the landscape's grid), or a :class:`ConfigError` naming
    the box and its range."""
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
