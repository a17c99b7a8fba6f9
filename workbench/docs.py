"""The tables of ``docs/VARIANTS.md``, ``docs/SETTINGS.md`` and ``README.md``, generated from the declarations
(the variant registry, ``TrainSettings``, each task's defaults and options) so they cannot drift from the code.

``workbench docs`` rewrites ``docs/VARIANTS.md`` (variants and their presets), ``docs/SETTINGS.md`` (training
settings, task defaults, task options) and the README's block between ``<!-- variants:start -->`` and
``<!-- variants:end -->`` (the rest of the README is written by hand); ``tests/test_docs.py`` fails when any is
out of date.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .io import atomic_write_text
from .options import allowed
from .settings import TrainSettings
from .variant import variant_infos

__all__ = ["variants_markdown", "settings_markdown", "readme_variants", "with_readme_variants", "generated_docs",
           "write_docs", "stale_docs", "README_START", "README_END", "RECONSTRUCTED_MARK"]

HEADER = """# Variants

Generated from the registry by `workbench docs` (do not edit by hand). Each variant's module docstring cites the
paper with its equation numbers and says what is simplified; `dynamic` variants change their own allocation
while training; `linear ΔW` variants satisfy `forward(x) = base(x) + x ΔWᵀ` exactly. A variant with an entry under
`reconstruction` was rebuilt from its paper's abstract, because neither the method section nor official code could
be found: read its results as those of our reading, not of the paper's method. Tensors under `not weight-decayed`
start away from "no change" (DoRA's magnitude starts at ‖W0‖), so `weight_decay` leaves them alone: decaying them
toward 0 would move the model away from W0 with zero gradients.

"""

README_START = "<!-- variants:start -->"
README_END = "<!-- variants:end -->"
#: after a key in the README's table: the variant is a reconstruction from its paper's abstract
RECONSTRUCTED_MARK = "†"
#: the README lists the families in this order; a family not named here follows, in registry order
FAMILY_ORDER = ("lowrank", "rank", "frequency", "basis", "tiny")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\\\|")


def _defaults(config) -> str:
    return ", ".join(f"{f['name']}={f['default']!r}" for f in config.fields_info()) or "—"


def variants_markdown() -> str:
    """The whole of ``docs/VARIANTS.md``: one row per registered variant, in display order."""
    rows = ["| key | family | paper | defaults | linear ΔW | dynamic | not weight-decayed | reconstruction | "
            "simplified / unconfirmed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in variant_infos():
        kept = ", ".join(f"`{name}`" for name in (*v.cls.Layer.no_decay, *getattr(v.cls.SharedModule, "no_decay", ())))
        rows.append(f"| `{v.name}` | {v.family} | {_cell(v.paper)} | {_cell(_defaults(v.config))} | "
                    f"{'yes' if v.linear_delta else 'no'} | {'yes' if v.dynamic else 'no'} | {kept or '—'} | "
                    f"{_cell(v.reconstruction) or '—'} | {_cell(v.cls.notes) or '—'} |")
    return HEADER + "\n".join(rows) + "\n" + _recipes_markdown() + _presets_markdown()


def _recipes_markdown() -> str:
    """The recipes (``workbench.recipes``): optimizer-level methods any compatible variant can be trained with."""
    from .recipes import recipe_infos

    rows = ["", "## Recipes", "",
            "Methods that change how an adapter is trained, not its layer: `train(..., recipe=name, "
            "recipe_options={...})`, or `\"lora+name\"` in `compare()`. A recipe that needs low-rank factors refuses "
            "variants without `factors()`.", "",
            "| key | paper | options | needs (B, A) | simplified / unconfirmed |", "| --- | --- | --- | --- | --- |"]
    for r in recipe_infos():
        rows.append(f"| `{r.name}` | {_cell(r.paper) or '—'} | {_cell(_defaults(r.config))} | "
                    f"{'yes' if r.needs_factors else 'no'} | {_cell(r.notes) or '—'} |")
    return "\n".join(rows) + "\n"


def _values(values: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items()) or "—"


def _presets_markdown() -> str:
    rows = ["", "## Presets", "",
            "Values a method needs on a task to show its behaviour in a short run, where its paper's defaults are "
            "sized for large models and long runs. `train()`, `compare()`, the dashboard and the CLI apply them unless "
            "told otherwise (`presets=False`, `--no-presets`); an explicit value always wins, and each run records "
            "where every value came from (`run.config[\"sources\"]`).", "",
            "| variant | task | config | training settings | why |", "| --- | --- | --- | --- | --- |"]
    for v in variant_infos():
        for p in v.cls.presets:
            rows.append(f"| `{v.name}` | `{p.task}` | {_cell(_values(p.config))} | {_cell(_values(p.settings))} | "
                        f"{_cell(p.reason)} |")
    return "\n".join(rows) + "\n"


def _fields_table(fields: list[dict]) -> list[str]:
    rows = ["| name | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{f['name']}` | `{f['default']!r}` | {_cell(allowed(f))} | {_cell(f['help'])} |" for f in fields]
    return rows


def _names(value, dynamic: str) -> str:
    """A class attribute listing module names, or a note when the task sets it per instance (a property)."""
    return _cell(", ".join(f"`{n}`" for n in value) or "—") if isinstance(value, (list, tuple)) else dynamic


def settings_markdown() -> str:
    """The whole of ``docs/SETTINGS.md``: every training setting, each task's defaults and each task's options."""
    from . import tasks

    out = ["# Training settings and tasks", "",
           "Generated from the declarations by `workbench docs` (do not edit by hand). A value `train()` uses comes "
           "from, lowest first: the declared default below, the task's defaults, the variant's preset for the task "
           "([VARIANTS.md](VARIANTS.md#presets)), and what the caller passed.", "", "## `TrainSettings`", "",
           *_fields_table(TrainSettings.fields_info()), "", "## Task defaults", "",
           "| task | training defaults | adapted layers | trained in full |", "| --- | --- | --- | --- |"]
    families = {}
    for name in tasks.names():
        families.setdefault(name.partition(":")[0], []).append(name)
    for family, names in families.items():
        cls = tasks.task_class(names[0])
        out.append(f"| `{family}:*` | {_cell(_values(cls.defaults))} | {_names(cls.targets or None, 'set per task')} | "
                   f"{_names(cls.trainable_modules, 'set by its options')} |")
    for family, names in families.items():
        fields = tasks.option_fields(names[0])
        if fields:
            out += ["", f"## Options of `{family}:*` ({', '.join(f'`{n}`' for n in names)})", "",
                    *_fields_table(fields)]
    return "\n".join(out) + "\n"


def readme_variants() -> str:
    """The README's generated block (markers excluded): the variant count, one row of keys per family, and a
    mark (:data:`RECONSTRUCTED_MARK`) on each key that is a reconstruction from its paper's abstract."""
    families: dict[str, list[str]] = {f: [] for f in FAMILY_ORDER}
    infos = variant_infos()
    marked = {v.name for v in infos if v.reconstruction}
    for v in infos:
        families.setdefault(v.family, []).append(v.name)

    def key(n: str) -> str:
        return f"`{n}`{RECONSTRUCTED_MARK if n in marked else ''}"

    rows = ["| family | variants |", "| --- | --- |"]
    rows += [f"| {family} | {', '.join(key(n) for n in names)} |" for family, names in families.items() if names]
    n_families = sum(1 for names in families.values() if names)
    intro = (f"{len(infos)} variants in {n_families} families "
             "(this block is generated from the registry by `workbench docs`):")
    out = [intro, "", *rows]
    if marked:
        out += ["", f"{RECONSTRUCTED_MARK} reconstructed from the paper's abstract (no method section or official "
                    "code found); docs/VARIANTS.md says what was reconstructed."]
    return "\n".join(out)


def with_readme_variants(readme: str) -> str:
    """``readme`` with its block between the markers replaced by :func:`readme_variants`."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ConfigError(f"README.md has no {README_START} … {README_END} block to fill with the variant table")
    return readme[:start + len(README_START)] + "\n" + readme_variants() + "\n" + readme[end:]


def generated_docs(root: Path | str = ".") -> dict[Path, str]:
    """What ``workbench docs`` writes under the repository ``root``: path → full text."""
    root = Path(root)
    readme = root / "README.md"
    return {root / "docs" / "VARIANTS.md": variants_markdown(), root / "docs" / "SETTINGS.md": settings_markdown(),
            readme: with_readme_variants(readme.read_text(encoding="utf-8"))}


def stale_docs(root: Path | str = ".") -> list[str]:
    """The generated files under ``root`` that are missing or differ from what the registry generates."""
    return [str(p.relative_to(root)) for p, text in generated_docs(root).items()
            if not p.exists() or p.read_text(encoding="utf-8") != text]


def write_docs(root: Path | str = ".") -> list[Path]:
    """Rewrite the generated files under ``root`` that changed; returns the paths written."""
    written = []
    for path, text in generated_docs(root).items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
            written.append(path)
    return written
