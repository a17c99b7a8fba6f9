"""A form of ipywidgets generated from any :class:`~workbench.options.Options` declaration (a variant's Config, the
training settings), one row per declared field: its value, what it allows and its help.

The values are read back as text through the one parser of the project (``Options.from_strings`` via
:func:`workbench.dashboard.forms.changed_options`), so a cell here, a cell of the dashboard's form and a CLI flag
accept the same text and fail with the same ConfigError naming the field and its range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as w
import pandas as pd

from ..dashboard.forms import cell, changed_options
from ..options import Options, allowed

__all__ = ["OptionsForm"]

LABEL = w.Layout(width="150px")
VALUE = w.Layout(width="160px")


class OptionsForm(w.VBox):
    """Editable rows for the fields of ``option_class``, filled with ``values`` (else the declared defaults).

    ``sources`` (``resolve()``'s: default, task, preset, explicit) is shown next to each value; ``first`` names the
    fields that lead, the rest follow in declaration order; ``only`` keeps just those fields.
    """

    def __init__(self, option_class: type[Options], values: dict[str, Any] | None = None,
                 sources: dict[str, str] | None = None, first: Sequence[str] = (), owner: str | None = None):
        self.option_class, self.owner = option_class, owner or option_class.owner
        self.shown = dict(values or {})
        infos = option_class.fields_info()
        order = list(first)
        infos.sort(key=lambda f: order.index(f["name"]) if f["name"] in order else len(order))
        self.fields: dict[str, w.Widget] = {}
        rows = []
        for info in infos:
            name = info["name"]
            value = self.shown.get(name, info["default"])
            self.shown.setdefault(name, value)
            box = _editor(info, value)
            self.fields[name] = box
            note = f"{allowed(info)}" + (f" · from {sources.get(name, 'default')}" if sources is not None else "")
            rows.append(w.HBox([w.Label(name, layout=LABEL, tooltip=info.get("help", "")), box,
                                w.HTML(f"<small>{note} — {info.get('help', '')}</small>")]))
        super().__init__(rows)

    def texts(self) -> dict[str, str]:
        """``{field: text}`` as the form shows it now."""
        return {name: _text(box) for name, box in self.fields.items()}

    def set(self, **values: Any) -> None:
        """Put values into the form (as a user would type them): ``form.set(r="8", lr=0.01)``."""
        for name, value in values.items():
            if name not in self.fields:
                self.option_class.check_keys({name: value}, self.owner)  # a ConfigError with suggestions
            box = self.fields[name]
            if isinstance(box, w.Checkbox):
                box.value = str(value).strip().lower() in ("true", "1", "yes", "on")
            else:
                box.value = cell(value) if not isinstance(value, str) else value

    def changed(self) -> dict[str, Any]:
        """The typed values the user changed from what the form was filled with (a ConfigError for text that is no
        value of its field); the untouched rows are left to ``train()``'s own resolution."""
        table = pd.DataFrame([{"field": k, "value": v} for k, v in self.texts().items()], columns=["field", "value"])
        return changed_options(self.option_class, table, self.shown, self.owner)


def _editor(info: dict, value: Any) -> w.Widget:
    """A dropdown for a field with choices, a checkbox for a plain bool, a text box for everything else (a number
    box would silently clamp or round what the user typed; text is parsed and refused with a message instead)."""
    if info["choices"] is not None and not info["nullable"]:
        return w.Dropdown(options=[cell(c) for c in info["choices"]], value=cell(value), layout=VALUE)
    if info["type"] == "bool" and not info["nullable"]:
        return w.Checkbox(value=bool(value), indent=False, layout=VALUE)
    return w.Text(value=cell(value), layout=VALUE)


def _text(box: w.Widget) -> str:
    if isinstance(box, w.Checkbox):
        return "true" if box.value else "false"
    return str(box.value)
