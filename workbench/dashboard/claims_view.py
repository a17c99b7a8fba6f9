"""The Learn tab's claims (issue 25): the claims of the chosen variant's (and recipe's) paper with the verdicts the
ledger recorded, and a live rerun of one claim as a background job with its figure.

Everything shown comes from :mod:`workbench.claims`: :func:`~workbench.claims.claims_for` reads the declarations and
``docs/claims.json`` (a verdict recorded for another declaration is shown as stale, never as current), and the rerun
is :func:`~workbench.claims.rerun`, the same experiment ``workbench claims NAME`` runs, without writing the ledger.

The rerun's progress reaches the page through :func:`follow`, a generator streamed by the Rerun button's own
event, not through the shared ``gr.Timer``: with one more listener on that timer (it fires every listener each
0.3 s), tests/test_browser.py's SoRA test, whose 400-step run lasts about 2 s, saw its allocation heatmap drawn only
after the run on 4 of 5 runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from .. import figures
from ..claims import get_claim, rerun
from ..claims.summary import LEDGER_ROOT, claims_markdown, claims_of
from ..errors import ConfigError
from . import jobs

__all__ = ["LEDGER_ROOT", "claims_section", "claim_choices", "start_claim", "claim_view", "follow"]

def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def _no_figure():
    return figures.claim_seeds({}, [], 0.0, 0.0, 0.0, title="claim")


def claims_section(*methods: str | None, root: str | Path = LEDGER_ROOT) -> str:
    """:func:`workbench.claims.claims_markdown` of the chosen variant and recipe, with how to rerun one here."""
    text = claims_markdown(*methods, root=root)
    return text + ("\n\nPick a claim below and press **Rerun** to train its arms here and watch the verdict."
                   if claim_choices(*methods, root=root) else "")


def claim_choices(*methods: str | None, root: str | Path = LEDGER_ROOT) -> list[str]:
    """The names of the claims :func:`claims_section` shows, for the rerun dropdown."""
    return [c.name for c, _ in claims_of(*methods, root=root)]


def start_claim(name: str | None, owner: str | None = None) -> str:
    """Rerun claim ``name`` in a background job (one per browser session); returns the job id. An unknown or empty
    name is a ConfigError naming the known claims."""
    if not name:
        raise ConfigError("claim: choose a claim to rerun (the variant's claims are listed above)")
    claim = get_claim(name)
    steps = None if claim.experiment else int(claim.settings.get("steps", 0)) or None  # an experiment: no ETA

    def work(job):
        if steps:
            job.planned_steps = steps * claim.seeds * len(claim.arms)
        job.set_phase(f"training {len(claim.arms)} arm(s) × {claim.seeds} seeds")
        return rerun(name, callback=job.on_event, control=job.control)

    return jobs.start("claim", work, owner=owner).id


def claim_view(job_id: str | None) -> tuple[str, object]:
    """(status line, figure) of a claim rerun: progress while it trains, then the verdict beside the recorded one
    and :func:`workbench.figures.claim_seeds` of the per-seed values."""
    from .callbacks import eta_text

    job = jobs.get(job_id)
    if job is None:
        return "", _no_figure()
    if job.error:
        return f"**Failed:** `{job.error}`", _no_figure()
    if not job.done:
        runs = len(job.runs)
        return (f"**{job.status()}** · run {runs} · {eta_text(job)}",
                _no_figure())
    result = job.result
    if result is None:
        return f"**{job.status()}** before the claim finished", _no_figure()
    v = result.verdict
    return (f"**{v.verdict}** · mean effect {_fmt(v.effect)} [{_fmt(v.low)}, {_fmt(v.high)}], p = {_fmt(v.p)} "
            f"({v.test}, {v.n} seeds) · {result.wall_s:.0f} s · rerun here, not written to the ledger",
            result.figure())


def follow(job_id: str | None, poll: float = 0.3) -> Iterator[tuple[str, object]]:
    """Yield :func:`claim_view` of the rerun each time its job changes (:func:`~.callbacks.job_version`), until it
    has ended (the last yield is the verdict); nothing for no job (a Rerun that was refused)."""
    from .callbacks import job_version

    seen = None
    while (job := jobs.get(job_id)) is not None:
        done = job.done  # read before the view: once it is True, the view drawn after it is final
        key = (done, job_version(job_id))
        if key != seen:
            seen = key
            yield claim_view(job_id)
        if done:
            return
        time.sleep(poll)
