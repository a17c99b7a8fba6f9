"""Run claims, decide them, and write the ledger: ``docs/CLAIMS.md`` and ``docs/claims.json``.

:func:`run_claim` trains every arm × seed through :func:`workbench.compare.compare` at one fixed rate (no sweep: a
claim states its settings), so ``executor="ray"`` trains the seeds of an arm in parallel; the runs are scored on
the task's test split where it has one. A claim that names an experiment (:mod:`workbench.claims.experiments`)
runs it once per seed instead, and it returns every arm's value. The declared statistic is read from each run, and
:func:`workbench.claims.verdict.decide` turns the per-seed pairs into the verdict with the declared test, α and
seeds. :func:`run_claims` writes the record (verdicts, per-seed values, intervals, seeds, wall time, the git
commit, the torch/transformers/peft versions and each declaration's digest) and renders the Markdown from that
record alone, so the two never disagree; :func:`stale_claims` says which declarations the written ledger does not
match. Verdicts are never edited by hand: rerun ``workbench claims``.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import tasks as task_registry
from ..errors import ConfigError
from ..runs import RunStore
from ..settings import resolve
from ..variant import get_variant
from .claim import Claim
from .experiments import run_experiment
from .registry import claims as declared
from .registry import get_claim
from .statistics import get_statistic
from .verdict import VERDICTS, Verdict, decide

__all__ = ["ClaimResult", "run_claim", "run_claims", "render_markdown", "load_record", "stale_claims", "write_ledger",
           "claims_for", "rerun", "LEDGER_MD", "LEDGER_JSON"]

LEDGER_MD, LEDGER_JSON = Path("docs/CLAIMS.md"), Path("docs/claims.json")


@dataclass
class ClaimResult:
    """One claim run: per-arm values (one per seed, in ``seeds`` order), the verdict, the wall time, the runs."""

    claim: Claim
    seeds: list[int]
    values: dict[str, list[float]]
    verdict: Verdict
    wall_s: float
    statuses: dict[str, list[str]] = field(default_factory=dict)
    runs: dict[str, list] = field(default_factory=dict, repr=False)
    #: torch's CPU threads while it ran: reductions are summed in another order with another count, so a claim near
    #: its threshold can change verdict between thread counts (the ledger says which it was run with)
    threads: int = field(default_factory=torch.get_num_threads)

    def record(self) -> dict[str, Any]:
        c = self.claim
        v = self.verdict.to_dict()
        v["effect_value"] = v.pop("effect")
        return {"name": c.name, "digest": c.digest(), "variant": c.variant, "statement": c.statement,
                "source": c.source, "task": c.task, "task_options": c.task_options, "statistic": c.statistic,
                "arms": {k: a.name for k, a in c.arms.items()}, "seeds": self.seeds,
                "values": {c.arms[k].name: vals for k, vals in self.values.items()}, "statuses": self.statuses,
                "threshold": c.threshold, "margin": c.margin, "experiment": c.experiment,
                "experiment_options": c.experiment_options, "wall_s": round(self.wall_s, 2), "threads": self.threads,
                "note": c.note, **v,
                "effect": c.describe_effect()}

    def figure(self):
        """:func:`workbench.figures.claim_seeds` of this result."""
        from .. import figures

        v = self.verdict
        return figures.claim_seeds({self.claim.arms[k].name: vals for k, vals in self.values.items()}, self.seeds,
                                   v.effect, v.low, v.high, statistic=self.claim.quantity,
                                   threshold=self.claim.threshold, title=self.claim.name, verdict=v.verdict)


def _arm_runs(claim: Claim, key: str, task, seeds: list[int], executor: str, store, live: dict) -> list:
    from ..compare import compare

    arm = claim.arms[key]
    settings = {**claim.settings, **arm.settings}
    lr = settings.pop("lr", None)
    settings.pop("seed", None)
    if lr is None:  # the rate the arm would train with: its preset's, else the task's
        lr = resolve(task, get_variant(arm.variant), settings, dict(arm.config),
                     use_presets=claim.presets).settings.lr
    cmp = compare(task, [arm.variant], lr=float(lr), seeds=seeds, configs={arm.variant: dict(arm.config)},
                  executor=executor, store=store, settings=settings, probes=tuple(claim.probes),
                  presets=claim.presets, **live)
    return cmp.runs


def run_claim(claim: Claim | str, *, seeds: int | list[int] | None = None, executor: str = "local",
              store: RunStore | str | None = None, callback=None, control=None) -> ClaimResult:
    """Train the claim's arms on the same seeds (the declared number unless ``seeds`` says otherwise), read the
    statistic from every run and decide (see the module docstring). ``callback`` and ``control`` reach every
    ``train()`` call (the dashboard's live rerun: its progress and its Stop button)."""
    claim = get_claim(claim) if isinstance(claim, str) else claim
    seeds = list(range(claim.seeds if seeds is None else seeds)) if seeds is None or isinstance(seeds, int) \
        else list(seeds)
    if len(seeds) < 2:
        raise ConfigError(f"claim {claim.name}: seeds={seeds!r} is invalid; a paired test needs at least 2 seeds")
    start = time.perf_counter()
    if claim.experiment:
        per_seed = [run_experiment(claim, s) for s in seeds]
        values = {k: [row[k] for row in per_seed] for k in sorted(claim.arms)}
        return ClaimResult(claim, seeds, values, _decide(claim, values), time.perf_counter() - start)
    task = task_registry.get(claim.task, **claim.task_options)
    stat = get_statistic(claim.statistic)
    values, statuses, runs = {}, {}, {}
    live = {k: v for k, v in (("callback", callback), ("control", control)) if v is not None}
    for key in sorted(claim.arms):
        arm_runs = _arm_runs(claim, key, task, seeds, executor, store, live)
        runs[key] = arm_runs
        statuses[key] = [r.status for r in arm_runs]
        values[key] = [float(stat(r, task, **claim.statistic_options)) for r in arm_runs]
    return ClaimResult(claim, seeds, values, _decide(claim, values), time.perf_counter() - start, statuses, runs)


def _decide(claim: Claim, values: dict[str, list[float]]) -> Verdict:
    return decide(values["a"], values.get("b"), direction=claim.direction, test=claim.test, alpha=claim.alpha,
                  threshold=claim.threshold, margin=claim.margin, seed=int(claim.digest(), 16) % (2**31))


# ------------------------------------------------------------------------------------------------- the record


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "scipy", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        head = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_record(root: str | Path = ".") -> dict[str, Any]:
    """The written ``docs/claims.json`` (an empty record when there is none)."""
    path = Path(root) / LEDGER_JSON
    if not path.exists():
        return {"claims": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.4g}"


def render_markdown(record: dict[str, Any], order: list[str] | None = None) -> str:
    """``docs/CLAIMS.md`` from the record alone (a table, then one section per claim)."""
    entries = record.get("claims", {})
    names = [n for n in (order or []) if n in entries] + sorted(n for n in entries if n not in (order or []))
    counts = {v: sum(entries[n]["verdict"] == v for n in names) for v in VERDICTS}
    lines = ["# Claims ledger", "",
             "<!-- generated by `workbench claims` from docs/claims.json: do not edit by hand -->", "",
             "Each paper's headline claim, tested here in a small experiment (tiny tasks, few steps, paired seeds: "
             "the same seed trains both arms). The effect is the per-seed difference a − b (or a − threshold; "
             "a non-inferiority claim adds its margin, stated in advance, to a − b); a claim "
             "*reproduces* when its one-sided test at α rejects the opposite (the (1 − 2α) interval lies "
             "wholly on the claimed side), *does not reproduce* when the interval lies wholly on the other side, and "
             "is *inconclusive* otherwise. These are small-scale checks of the claim's mechanism, not of the "
             "paper's benchmark numbers.", "",
             f"**{len(names)} claims: {counts['reproduces']} reproduce, {counts['does not reproduce']} do not "
             f"reproduce, {counts['inconclusive']} inconclusive.** Code {record.get('commit', '?')}; "
             + ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items())
             + f"; total wall time {_fmt(sum(entries[n]['wall_s'] for n in names))} s "
             f"({record.get('executor', 'local')} executor).", "",
             "| claim | variant | effect claimed | verdict | mean effect [interval] | p | seeds | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for n in names:
        e = entries[n]
        lines.append(f"| [{n}](#{n}) | {e['variant']} | {e['effect']} | **{e['verdict']}** | "
                     f"{_fmt(e['effect_value'])} "
                     f"[{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}] | {_fmt(e['p'])} | {len(e['seeds'])} | "
                     f"{_fmt(e['wall_s'])} |")
    for n in names:
        e = entries[n]
        on = (f"`{e['task']}`" + (f" with {e['task_options']}" if e['task_options'] else "")) if e['task'] else ""
        if e.get("experiment"):
            what = f"- experiment `{e['experiment']}`" + (f" on {on}" if on else "") \
                + (f" (options {e['experiment_options']})" if e.get("experiment_options") else "")
        else:
            what = f"- experiment: {on}"
        arms = f"arms {', '.join(f'{k} = {v}' for k, v in e['arms'].items())}"
        quantity = "" if e.get("experiment") else f"; statistic `{e['statistic']}`"
        margin = f" (non-inferiority margin {e['margin']:g}, stated in advance)" if e.get("margin") else ""
        lines += ["", f"## {n}", "", f"**{e['verdict']}**. *{e['statement']}* ({e['source']})", "",
                  f"{what}, {arms}{quantity}; claimed {e['effect']}{margin}",
                  f"- test: {e['test']}, α = {e['alpha']:g} one-sided, {len(e['seeds'])} seeds {e['seeds']}; "
                  f"mean effect {_fmt(e['effect_value'])}, {100 * e['confidence']:.0f}% interval "
                  f"[{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}], p = {_fmt(e['p'])} (opposite direction "
                  f"{_fmt(e['p_opposite'])}); wall time {_fmt(e['wall_s'])} s"
                 + (f" on {e['threads']} CPU threads" if e.get("threads") else "")]
        for key, arm in sorted(e["arms"].items()):
            lines.append(f"- {key} = {arm}: " + ", ".join(_fmt(v) for v in e["values"].get(arm, [])))
        if e.get("note"):
            lines.append(f"- note: {e['note']}")
    return "\n".join(lines) + "\n"


def write_ledger(results: list[ClaimResult], root: str | Path = ".", executor: str = "local") -> dict[str, Any]:
    """Merge ``results`` into ``docs/claims.json`` (claims not rerun keep their record; claims no longer
    declared are dropped) and render ``docs/CLAIMS.md`` from it."""
    root = Path(root)
    record = load_record(root)
    known = {c.name: c for c in declared()}
    entries = {n: e for n, e in record.get("claims", {}).items() if n in known}
    for r in results:
        entries[r.claim.name] = r.record()
    record = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": _commit(root),
              "versions": _versions(), "executor": executor, "claims": entries}
    text = json.dumps(_finite(record), indent=1, sort_keys=True, default=str, allow_nan=False) + "\n"
    (root / LEDGER_JSON).parent.mkdir(parents=True, exist_ok=True)
    (root / LEDGER_JSON).write_text(text, encoding="utf-8")
    record = json.loads(text)  # render what was written, as stale_claims() will read it
    (root / LEDGER_MD).write_text(render_markdown(record, order=list(known)), encoding="utf-8")
    return record


def _finite(x):
    """NaN and ±inf as JSON null (strict JSON), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def run_claims(names: list[str] | None = None, executor: str = "local", store: RunStore | str | None = None,
               root: str | Path = ".", write: bool = True, progress=print) -> list[ClaimResult]:
    """Run the named claims (every declared one when ``names`` is None) and, with ``write``, update the ledger
    under ``root``; ``progress`` gets one line per finished claim."""
    chosen = declared() if not names else [get_claim(n) for n in names]
    results = []
    for claim in chosen:
        result = run_claim(claim, executor=executor, store=store)
        results.append(result)
        if progress:
            v = result.verdict
            progress(f"{claim.name}: {v.verdict} (effect {_fmt(v.effect)} [{_fmt(v.low)}, {_fmt(v.high)}], "
                     f"p {_fmt(v.p)}; {result.wall_s:.1f} s)")
    if write:
        write_ledger(results, root, executor)
    return results


def stale_claims(root: str | Path = ".") -> list[str]:
    """Why the written ledger does not match the declarations: one line per declared claim that is missing or
    whose digest differs, and one when docs/CLAIMS.md is not the rendering of docs/claims.json. Empty: up to date."""
    root = Path(root)
    record = load_record(root)
    entries = record.get("claims", {})
    out = []
    known = declared()
    for c in known:
        if c.name not in entries:
            out.append(f"{c.name}: declared but not in {LEDGER_JSON}")
        elif entries[c.name].get("digest") != c.digest():
            out.append(f"{c.name}: its declaration changed since its verdict was recorded")
    md = root / LEDGER_MD
    if not md.exists() or md.read_text(encoding="utf-8") != render_markdown(record, order=[c.name for c in known]):
        out.append(f"{LEDGER_MD} is not the rendering of {LEDGER_JSON}")
    return out


# ------------------------------------------------------------------------------------------ for the dashboard


def claims_for(variant: str, root: str | Path = ".") -> list[tuple[Claim, dict[str, Any] | None]]:
    """The claims of ``variant``'s paper with their recorded verdicts (``None`` when never run, or recorded for
    another declaration): what the Learn tab shows."""
    from .registry import claims_of_variant

    entries = load_record(root).get("claims", {})
    out = []
    for c in claims_of_variant(variant):
        e = entries.get(c.name)
        out.append((c, e if e is not None and e.get("digest") == c.digest() else None))
    return out


def rerun(name: str, seeds: int | list[int] | None = None, executor: str = "local", callback=None,
          control=None) -> ClaimResult:
    """Run one claim live (nothing written to the ledger); ``result.figure()`` draws it
    (:func:`workbench.figures.claim_seeds`)."""
    return run_claim(name, seeds=seeds, executor=executor, callback=callback, control=control)
