"""The claims of some methods' papers as a Markdown table with their recorded verdicts: what the dashboard's Learn
tab and the notebooks show (one text, two surfaces).

:func:`claims_markdown` reads the declarations and the ledger's ``docs/claims.json`` through
:func:`~workbench.claims.runner.claims_for`, so a verdict recorded for another declaration is shown as *not run for
this declaration*, never as current. ``LEDGER_ROOT`` is the repository the package was installed from (a wheel
without ``docs/`` shows every claim as not run).
"""

from __future__ import annotations

from pathlib import Path

from .claim import Claim
from .registry import claim_names
from .runner import LEDGER_MD, claims_for

__all__ = ["LEDGER_ROOT", "claims_markdown", "claims_of"]

LEDGER_ROOT = Path(__file__).resolve().parents[2]


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def claims_of(*items: str | None, root: str | Path = LEDGER_ROOT) -> list[tuple[Claim, dict | None]]:
    """The claims named by ``items`` with their recorded entries: an item is a variant or recipe (its paper's
    claims) or a claim's own name; ``None`` and ``"none"`` are skipped, a claim is listed once."""
    names, out = set(claim_names()), {}
    for item in items:
        if not item or item == "none":
            continue
        found = claims_for(item, root)
        if item in names:
            found = [(c, e) for c, e in claims_for(_owner(item), root) if c.name == item]
        for claim, entry in found:
            out.setdefault(claim.name, (claim, entry))
    return list(out.values())


def _owner(name: str) -> str:
    from .registry import get_claim

    return get_claim(name).variant


def claims_markdown(*items: str | None, root: str | Path = LEDGER_ROOT) -> str:
    """Markdown: one row per claim of :func:`claims_of` (the statement, its source, the tested inequality on its
    task, the recorded verdict with its mean effect and interval, the seeds)."""
    rows = claims_of(*items, root=root)
    names = " and ".join(f"`{m}`" for m in items if m and m != "none")
    if not rows:
        return (f"**Claims.** No claim of {names}'s paper is in the ledger yet; {LEDGER_MD} lists the claims tested "
                f"(`workbench claims --list`).")
    lines = [f"### What the paper claims, tested here ({LEDGER_MD}, `workbench claims`)", "",
             "| claim | tested as | verdict: mean effect [interval] |", "| --- | --- | --- |"]
    for claim, entry in rows:
        if entry is None:
            verdict = f"**not run for this declaration** ({claim.seeds} seeds declared)"
        else:
            verdict = (f"**{entry['verdict']}**: {_fmt(entry['effect_value'])} [{_fmt(entry['ci_low'])}, "
                       f"{_fmt(entry['ci_high'])}] over {len(entry['seeds'])} seeds")
        where = f" on `{claim.task}`" if claim.task else ""
        lines.append(f"| `{claim.name}`: *{claim.statement}* ({claim.source}) | {claim.describe_effect()}{where} | "
                     f"{verdict} |")
    return "\n".join(lines)
