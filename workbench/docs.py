"""The variants table of ``docs/VARIANTS.md``, generated from the registry so it cannot drift from the code.

``workbench docs`` rewrites the file; ``tests/test_docs.py`` fails when it is out of date.
"""

from __future__ import annotations

from .variant import variant_infos

HEADER = """# Variants

Generated from the registry by `workbench docs` (do not edit by hand). Each variant's module docstring cites the
paper with its equation numbers and says what is simplified; `dynamic` variants change their own allocation
while training; `linear ΔW` variants satisfy `forward(x) = base(x) + x ΔWᵀ` exactly.

"""


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\\\|")


def _defaults(config) -> str:
    return ", ".join(f"{f['name']}={f['default']!r}" for f in config.fields_info()) or "—"


def variants_markdown() -> str:
    rows = ["| key | family | paper | defaults | linear ΔW | dynamic | simplified / unconfirmed |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in variant_infos():
        rows.append(f"| `{v.name}` | {v.family} | {_cell(v.paper)} | {_cell(_defaults(v.config))} | "
                    f"{'yes' if v.linear_delta else 'no'} | {'yes' if v.dynamic else 'no'} | "
                    f"{_cell(v.cls.notes) or '—'} |")
    return HEADER + "\n".join(rows) + "\n"
