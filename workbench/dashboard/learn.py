"""What the Learn card says about a paper's defaults on the chosen task's layers, and the variant's presets.

Papers size their defaults for their models' layers (768×768 and up): FourierFT's and LoCA's n = 1000 coefficients
are 0.17% of a 768×768 layer but 24% of a 64×64 one, and VeRA's r = 256 is four times a 64-wide layer's rank. The
card flags such fields, read from the config's declaration (no variant names here):

* a count of weight entries (a field whose declared upper bound is the layer's ``out·in``, or one named ``n``,
  ``n_frequency``, ``n_coefficients``) above :data:`COUNT_SHARE` of a target layer's weights;
* a rank (``r``, ``target_r``, ``init_r``, ``target_rank`` ...) above :data:`RANK_SHARE` of a target layer's full
  rank ``min(out, in)``.
"""

from __future__ import annotations

from typing import Any

from ..options import Shape

#: a count of weight entries above this share of the layer's weights is sized for a larger layer: the papers' own
#: defaults sit near 0.2% of theirs, so 10% is fifty times more than the paper meant
COUNT_SHARE = 0.10
#: a rank above this share of ``min(out, in)`` leaves little low-rank structure to learn
RANK_SHARE = 0.5
COUNT_NAMES = ("n", "n_frequency", "n_coefficients")


def _is_count(info: dict[str, Any], shape: Shape) -> bool:
    high = info.get("high")
    declared = callable(high) and high(shape) == shape[0] * shape[1] and high((3, 5)) == 15
    return info.get("type") == "int" and (declared or info["name"] in COUNT_NAMES)


def _is_rank(info: dict[str, Any]) -> bool:
    name = info["name"]
    return info.get("type") == "int" and (name in ("r", "rank") or name.endswith(("_r", "_rank")))


def oversized_defaults(fields: list[dict[str, Any]], shapes: dict[str, Shape]) -> list[str]:
    """One phrase per default that is large for the smallest target layer it is measured on (``fields`` as
    ``Config.fields_info()`` gives them, ``shapes`` the targets' ``(out, in)``)."""
    if not shapes:
        return []
    phrases = []
    for info in fields:
        value = info.get("default")
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        some = next(iter(shapes.values()))
        if _is_count(info, some):
            out, inp = min(shapes.values(), key=lambda s: s[0] * s[1])
            share = value / (out * inp)
            if share > COUNT_SHARE:
                phrases.append(f"`{info['name']}` = {value:,} covers {share:.0%} of a {out}×{inp} layer's "
                               f"{out * inp:,} weights")
        elif _is_rank(info):
            out, inp = min(shapes.values(), key=min)
            if value > RANK_SHARE * min(out, inp):
                phrases.append(f"`{info['name']}` = {value:,} exceeds half of a {out}×{inp} layer's full rank "
                               f"({min(out, inp)})")
    return phrases


def sizing_note(fields: list[dict[str, Any]], shapes: dict[str, Shape]) -> str:
    """The card's one line about oversized defaults, or ``""`` when every default fits the task's layers."""
    phrases = oversized_defaults(fields, shapes)
    if not phrases:
        return ""
    return (f"⚠️ **Sized for much larger layers:** {'; '.join(phrases)}. The paper chose these defaults for far "
            f"wider layers; smaller values suit this task.")


def _values(preset) -> str:
    config = ", ".join(f"`{k}={v!r}`" for k, v in preset.config.items())
    settings = ", ".join(f"`{k}={v!r}`" for k, v in preset.settings.items())
    return " · ".join(part for part in (config and f"config {config}", settings and f"training {settings}") if part)


def presets_section(presets, applies=None) -> str:
    """The card's table of the variant's presets (task pattern, values, reason), the one for the chosen task
    marked; ``""`` for a variant without presets. Presets are declared next to the variant (``Variant.presets``)."""
    if not presets:
        return ""
    rows = "\n".join(f"| `{p.task}`{' ✓' if p is applies else ''} | {_values(p) or '—'} | {p.reason} |"
                     for p in presets)
    return ("\n\n**Presets** (applied by default on matching tasks; any explicit value overrides them; ✓ applies to "
            "the task above):\n\n| task | values | reason |\n| --- | --- | --- |\n" + rows)


def recipe_card(name: str) -> str:
    """What an optimizer recipe is (``workbench.recipes``): paper, idea, what it needs and its declared options, from
    the same declaration its Train form comes from."""
    from ..recipes import recipe_infos

    info = next((r for r in recipe_infos() if r.name == name), None)
    if info is None:
        return ""
    fields = "\n".join(f"| `{f['name']}` | `{f['default']!r}` | {f.get('help', '')} |"
                       for f in info.config.fields_info()) or "| — | — | no options |"
    need = ("It reads each layer's low-rank factors (B, A): variants without `factors()` are refused."
            if info.needs_factors else "It trains any variant.")
    notes = f"\n\n*Simplified or unconfirmed:* {info.notes}" if info.notes else ""
    return (f"## recipe: {info.name}\n*{info.paper}*\n\n{info.summary} {need}{notes}\n\n"
            f"Train with it: set the `recipe` row of the Train tab's settings to `{info.name}` (its options form "
            f"appears below them), or pick `lora+{info.name}` on Compare; in code, "
            f"`wb.train(task, \"lora\", recipe=\"{info.name}\", recipe_options={{...}})`.\n\n"
            f"| option | default | meaning |\n| --- | --- | --- |\n{fields}")
