"""The variant tables of ``docs/VARIANTS.md`` and ``README.md``, generated from the registry so they cannot drift
from the code.

``workbench docs`` rewrites ``docs/VARIANTS.md`` and the README's block between ``<!-- variants:start -->`` and
``<!-- variants:end -->`` (the rest of the README is written by hand); ``tests/test_docs.py`` fails when either is
out of date.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .io import atomic_write_text
from .variant import variant_infos

__all__ = ["variants_markdown", "readme_variants", "with_readme_variants", "generated_docs", "write_docs",
           "stale_docs", "README_START", "README_END"]

HEADER = """# Variants

Generated from the registry by `workbench docs` (do not edit by hand). Each variant's module docstring cites the
paper with its equation numbers and says what is simplified; `dynamic` variants change their own allocation
while training; `linear ΔW` variants satisfy `forward(x) = base(x) + x ΔWᵀ` exactly.

"""

README_START = "<!-- variants:start -->"
README_END = "<!-- variants:end -->"
#: the README lists the families in this order; a family not named here follows, in registry order
FAMILY_ORDER = ("lowrank", "rank", "frequency", "basis", "tiny")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\\\|")


def _defaults(config) -> str:
    return ", ".join(f"{f['name']}={f['default']!r}" for f in config.fields_info()) or "—"


def variants_markdown() -> str:
    """The whole of ``docs/VARIANTS.md``: one row per registered variant, in display order."""
    rows = ["| key | family | paper | defaults | linear ΔW | dynamic | simplified / unconfirmed |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in variant_infos():
        rows.append(f"| `{v.name}` | {v.family} | {_cell(v.paper)} | {_cell(_defaults(v.config))} | "
                    f"{'yes' if v.linear_delta else 'no'} | {'yes' if v.dynamic else 'no'} | "
                    f"{_cell(v.cls.notes) or '—'} |")
    return HEADER + "\n".join(rows) + "\n"


def readme_variants() -> str:
    """The README's generated block (markers excluded): the variant count and one row of keys per family."""
    families: dict[str, list[str]] = {f: [] for f in FAMILY_ORDER}
    infos = variant_infos()
    for v in infos:
        families.setdefault(v.family, []).append(v.name)
    rows = ["| family | variants |", "| --- | --- |"]
    rows += [f"| {family} | {', '.join(f'`{n}`' for n in names)} |" for family, names in families.items() if names]
    n_families = sum(1 for names in families.values() if names)
    intro = (f"{len(infos)} variants in {n_families} families "
             "(this block is generated from the registry by `workbench docs`):")
    return "\n".join([intro, "", *rows])


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
    return {root / "docs" / "VARIANTS.md": variants_markdown(),
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
