"""A comparison as a study: rates chosen on ``val``, numbers reported on ``test``, seeds with intervals, and two
protocols side by side (issue 19).

Why: PEFT's method-comparison suite trains every method at one shared rate, and some methods then look broken;
LoRAFactory's unified study tuned each method's rate and found vanilla LoRA within noise of most variants. Which
lesson a table teaches depends on the protocol, so :func:`study` runs both on the same runs:

* ``"shared"``: one rate for every variant (by default the rate tuned for the first variant, the reference, as a
  suite tuned for LoRA would use; ``shared_lr=`` gives it);
* ``"tuned"``: each variant at its own rate, chosen on ``val`` by :func:`~workbench.compare.compare`'s sweep.

Everything trains through :func:`workbench.train.train` via :func:`~workbench.compare.compare`; the two protocols
share one run cache, so a run both need (the reference variant at its rate, a rate in every sweep) trains once.

The statistics (:func:`summarize`), over the completed runs of each variant: n, the mean, the sample standard
deviation s (ddof = 1, Bessel's correction), the Student-t interval mean ± t_{(1+c)/2, n−1} · s/√n at confidence c
(``scipy.stats.t.interval``), and Welch's unequal-variance t-test of each variant against the best mean
(``scipy.stats.ttest_ind(equal_var=False)``): a variant whose p ≥ ``alpha`` is marked indistinguishable from the
best (not shown worse at that level; with fewer than two runs on either side nothing is tested and the mark is
missing). A diverged run has no metric (its restored "last good state" is not a trained result) and does not
count in n.

Which spread a table shows is said in its ``spread`` column: seeds vary the adapter's initialisation and the data
order; ``data_seeds`` rebuild the task as well (its ``seed`` option: the synthetic truth and data, the digits'
division of held-out digits into val and test), so their spread also holds the data's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from . import tasks as task_registry
from .compare import Comparison, compare
from .errors import ConfigError

__all__ = ["study", "run_study", "Study", "summarize", "interval", "welch_p", "PROTOCOLS", "export_csv"]

PROTOCOLS = ("shared", "tuned")
#: the other columns summarize() averages per variant (mean and sample std)
COST_COLUMNS = ("trainable_params", "saved_numbers", "seconds_per_step", "peak_memory_mb", "final_loss")


def interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std with ddof = 1, low, high) of the Student-t ``confidence`` interval of the mean; the std
    and the interval are NaN with fewer than two values (one run says nothing about the spread)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    if std == 0.0:
        return mean, 0.0, mean, mean
    low, high = scipy.stats.t.interval(confidence, df=len(x) - 1, loc=mean, scale=std / math.sqrt(len(x)))
    return mean, std, float(low), float(high)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sided p-value of Welch's t-test (unequal variances) that ``a`` and ``b`` have the same mean; NaN
    when either has fewer than two values. Two constant samples: 1 if they are equal, else 0."""
    a, b = (np.asarray([v for v in s if v is not None and math.isfinite(v)], dtype=float) for s in (a, b))
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def _check(name: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, (int, float)) and low < value < high):
        raise ConfigError(f"study: {name}={value!r} is invalid; {name} must be a number in ({low:g}, {high:g})")


def summarize(table: pd.DataFrame, value: str = "metric_value", by: str = "variant",
              within: str | Sequence[str] | None = None, higher_is_better: bool = False,
              confidence: float = 0.95, alpha: float = 0.05, expected: Sequence | None = None) -> pd.DataFrame:
    """One row per ``by`` (inside each ``within`` group, e.g. the protocol): ``n`` (completed runs with a finite
    ``value``), ``runs`` (all), ``<value>_mean``, ``<value>_std`` (ddof = 1), ``<value>_ci_low/high`` (the
    ``confidence`` t-interval), ``best`` (the best mean of its group), ``p_vs_best`` (Welch) and
    ``indistinguishable`` (p ≥ ``alpha``; the best itself is True; missing when untestable), then the mean and
    sample std of :data:`COST_COLUMNS` and the ``split`` the numbers are from. Groups keep their order of first
    appearance; a variant none of whose runs completed keeps a row with n = 0, and so does every key of
    ``expected`` (``within`` values then ``by``, as tuples, or plain ``by`` values) that has no runs at all (a
    variant whose every swept rate diverged)."""
    _check("confidence", confidence, 0, 1)
    _check("alpha", alpha, 0, 1)
    within = [] if within is None else [within] if isinstance(within, str) else list(within)
    keys = [*within, by]
    ok = table["status"].eq("completed") if "status" in table else pd.Series(True, index=table.index)
    rows = []
    present = set(map(tuple, table[keys].itertuples(index=False, name=None))) if not table.empty else set()
    missing = [k if isinstance(k, tuple) else (k,) for k in (expected or [])]
    missing = [k for k in dict.fromkeys(missing) if k not in present]
    if table.empty and not missing:
        return pd.DataFrame(columns=[*keys, "n", "runs", f"{value}_mean", f"{value}_std"])
    for group_key, g in table.groupby(keys, sort=False):
        group_key = group_key if isinstance(group_key, tuple) else (group_key,)
        good = g[ok.loc[g.index]]
        values = [float(v) for v in good[value] if pd.notna(v) and math.isfinite(float(v))]
        mean, std, low, high = interval(values, confidence)
        row: dict[str, Any] = dict(zip(keys, group_key))
        row.update({"n": len(values), "runs": len(g), f"{value}_mean": mean, f"{value}_std": std,
                    f"{value}_ci_low": low, f"{value}_ci_high": high, "_values": values})
        for col in COST_COLUMNS:
            if col in g:
                vals = pd.to_numeric(good[col], errors="coerce").dropna()
                row[f"{col}_mean"] = float(vals.mean()) if len(vals) else math.nan
                row[f"{col}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        for col in ("metric", "split"):  # the metric's own name (rel_error, accuracy) and where it was measured
            if col in g:
                row[col] = ", ".join(dict.fromkeys(g[col].dropna().astype(str)))
        rows.append(row)
    for k in missing:
        rows.append({**dict(zip(keys, k)), "n": 0, "runs": 0, f"{value}_mean": math.nan, f"{value}_std": math.nan,
                     f"{value}_ci_low": math.nan, f"{value}_ci_high": math.nan, "_values": []})
    out = pd.DataFrame(rows)
    out["best"], out["p_vs_best"], out["indistinguishable"] = False, math.nan, None
    out["indistinguishable"] = out["indistinguishable"].astype(object)
    groups = out.groupby(within[0] if len(within) == 1 else within, sort=False).groups.values() if within else [
        out.index]
    for idx in groups:
        g = out.loc[idx]
        scored = g[g["n"] > 0]
        if scored.empty:
            continue
        means = scored[f"{value}_mean"]
        best = means.idxmax() if higher_is_better else means.idxmin()
        out.loc[best, "best"] = True
        for i in idx:
            if i == best:
                out.at[i, "p_vs_best"], out.at[i, "indistinguishable"] = 1.0, True
                continue
            p = welch_p(out.at[i, "_values"], out.at[best, "_values"])
            out.at[i, "p_vs_best"] = p
            out.at[i, "indistinguishable"] = None if math.isnan(p) else bool(p >= alpha)
    out.attrs.update({"value": value, "confidence": confidence, "alpha": alpha,
                      "test": "Welch's t-test (scipy.stats.ttest_ind, equal_var=False) against the best mean",
                      "higher_is_better": higher_is_better})
    return out.drop(columns="_values")


@dataclass
class Study:
    """What :func:`run_study` returns: the per-run ``table`` (every protocol, every data seed), its ``summary``,
    the comparisons behind it (by ``(protocol, data_seed)``) and the rates used."""

    task: str
    table: pd.DataFrame
    summary: pd.DataFrame
    comparisons: dict[tuple[str, Any], Comparison] = field(default_factory=dict)
    rates: dict[tuple[str, Any], dict[str, float]] = field(default_factory=dict)


def _spread(seeds: list[int], data_seeds: list) -> str:
    if data_seeds == [None]:
        return f"training seeds {seeds} (init and data order; the task's data fixed)"
    return f"training seeds {seeds} × data seeds {data_seeds} (init, data order and the task's data)"


def run_study(task, variants: Sequence[str], *, protocols: Iterable[str] = PROTOCOLS,
              seeds: int | Iterable[int] = 3, data_seeds: Iterable[int] | None = None,
              shared_lr: float | None = None, lrs: Iterable[float] | None = None, confidence: float = 0.95,
              alpha: float = 0.05, **compare_kwargs) -> Study:
    """Every variant under each protocol (:data:`PROTOCOLS`) for every seed (an int n: seeds 0 … n−1) and data
    seed; see the module docstring. ``compare_kwargs`` go to every :func:`~workbench.compare.compare` call
    (``steps``, ``budget``, ``configs``, ``store``, ``executor``, ...)."""
    protocols = list(protocols)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if not protocols or bad or len(set(protocols)) < len(protocols):
        raise ConfigError(f"study: protocols={protocols!r} is invalid; protocols must be distinct names among "
                          f"{', '.join(map(repr, PROTOCOLS))}")
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ConfigError("study: seeds is empty; give a number of seeds (≥ 1) or a list of seeds")
    data_seeds = [None] if data_seeds is None else list(data_seeds)
    if not data_seeds:
        raise ConfigError("study: data_seeds is empty; leave it out (the task's own data) or list data seeds")
    if "lr" in compare_kwargs:
        raise ConfigError("study: lr is set by the protocols; give shared_lr= (the shared rate) or lrs= (the sweep)")
    variants = list(variants)
    name = task if isinstance(task, str) else task.name
    higher = None
    tables, comparisons, rates = [], {}, {}
    for ds in data_seeds:
        current = task_registry.get(task, **({} if ds is None else {"seed": ds})) if isinstance(task, str) else task
        cache: dict = {}  # one cache per task instance: both protocols reuse each other's runs
        kw = dict(compare_kwargs, data_seed=ds, cache=cache)
        done: dict[str, Comparison] = {}
        if "tuned" in protocols:
            done["tuned"] = compare(current, variants, lr="sweep", lrs=lrs, seeds=seeds, **kw)
        if "shared" in protocols:
            rate = shared_lr
            if rate is None:  # the reference's tuned rate (its sweep is in the cache when "tuned" ran)
                ref = done.get("tuned") or compare(current, variants[:1], lr="sweep", lrs=lrs, seeds=seeds[:1],
                                                   **kw)
                rate = ref.best_lr[variants[0]]
                if not math.isfinite(rate):
                    raise ConfigError(f"study: no swept rate of {variants[0]} completed, so there is no shared rate "
                                      f"to use; give shared_lr= or other lrs=")
            done["shared"] = compare(current, variants, lr=float(rate), seeds=seeds, **kw)
        for protocol in protocols:
            cmp = done[protocol]
            t = cmp.table.copy()
            higher = bool(cmp.table.attrs.get("higher_is_better", False))
            t.insert(0, "protocol", protocol)
            t["lr_chosen"] = "on val, per variant" if protocol == "tuned" else "one for all"
            tables.append(t)
            comparisons[(protocol, ds)] = cmp
            rates[(protocol, ds)] = dict(cmp.best_lr)
    table = pd.concat(tables, ignore_index=True)
    expected = [(p, v) for p in protocols for v in variants]
    summary = summarize(table, within="protocol", higher_is_better=bool(higher), confidence=confidence,
                        alpha=alpha, expected=expected)
    lrs_used = {}
    for (protocol, _), r in rates.items():
        for v, x in r.items():
            lrs_used.setdefault((protocol, v), []).append(x)
    summary.insert(2, "lr", [", ".join(dict.fromkeys(f"{x:.3g}" for x in lrs_used.get((p, v), [])))
                             for p, v in zip(summary["protocol"], summary["variant"])])
    summary["spread"] = _spread(seeds, data_seeds)
    summary.attrs.update({"task": name, "spread": _spread(seeds, data_seeds), "selection": "val",
                          "split": ", ".join(dict.fromkeys(table["split"].astype(str)))})
    return Study(task=name, table=table, summary=summary, comparisons=comparisons, rates=rates)


def study(task, variants: Sequence[str], *, protocols: Iterable[str] = PROTOCOLS, seeds: int | Iterable[int] = 3,
          **kwargs) -> pd.DataFrame:
    """The summary frame of :func:`run_study`: one row per protocol × variant with the chosen rate, n, mean, sample
    std, the confidence interval, the indistinguishable-from-best mark, the split the numbers are from and which
    spread they show, e.g. ``wb.study("digits:rotate", ["lora", "dora"], protocols=("shared", "tuned"),
    seeds=3)``."""
    return run_study(task, variants, protocols=protocols, seeds=seeds, **kwargs).summary


def export_csv(frame: pd.DataFrame, path: str | Path | None = None) -> str:
    """The table as CSV text (written to ``path`` too when given), with the frame's notes (``attrs``: split,
    spread, test) as leading ``#`` comment lines so the numbers never travel without what they are."""
    notes = "".join(f"# {k}: {v}\n" for k, v in frame.attrs.items() if isinstance(v, (str, int, float, bool)))
    text = notes + frame.to_csv(index=False)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
