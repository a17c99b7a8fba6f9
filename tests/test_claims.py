"""The claims ledger (issue 25): verdict logic against scipy computed another way, the declared test and seeds
are the ones used, constructed failures / noise / effects get their verdicts end to end, staleness, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from workbench import claims as C
from workbench.claims import runner as R
from workbench.claims.claim import Claim
from workbench.cli import main
from workbench.errors import ConfigError
from workbench.study import welch_p

ROOT = Path(__file__).resolve().parents[1]
A, B = "lora", "dora"  # two tiny arms: the fake statistic below returns a constructed value per arm and seed


@C.register_statistic("test-table", "a constructed value per variant and seed (tests only)")
def _table(run, task, table):
    return float(table[run.variant][int(run.config["seed"])])


def fake_claim(a_values, b_values, **kw) -> Claim:
    n = len(a_values)
    fields = dict(name="fake", variant="lora", statement="s", source="test", task="synthetic:lowrank",
                  settings={"steps": 2, "lr": 1e-3, "batch_size": 8},
                  arms={"a": (A, {"r": 1}), "b": (B, {"r": 1})}, statistic="test-table",
                  statistic_options={"table": {A: list(a_values), B: list(b_values)}}, direction="less", seeds=n)
    return Claim(**{**fields, **kw})


# ------------------------------------------------------------------------------------------------ pure verdicts


def test_paired_t_is_scipys_ttest_rel_and_its_interval_the_one_sided_bounds():
    a, b = np.array([1.0, 1.4, 0.7, 1.1]), np.array([1.3, 1.6, 1.2, 1.2])
    v = C.decide(a, b, direction="less", test="paired-t", alpha=0.05)
    assert v.p == pytest.approx(scipy.stats.ttest_rel(a, b, alternative="less").pvalue)
    d = a - b
    half = scipy.stats.t.ppf(0.95, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))  # one-sided 95% bound
    assert (v.low, v.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert v.verdict == C.REPRODUCES and v.high < 0 and v.p < 0.05  # the interval wholly on the claimed side


def test_constructed_failure_noise_and_effect_get_their_verdicts():
    base = np.array([0.5, 2.0, 1.0, 3.0])  # large between-seed spread, shared by both arms (same seed)
    effect = C.decide(base - 0.1 + [0.0, 0.01, -0.01, 0.0], base, direction="less")
    opposite = C.decide(base + 0.1 + [0.0, 0.01, -0.01, 0.0], base, direction="less")
    noise = C.decide(base + [0.05, -0.04, 0.03, -0.05], base, direction="less")
    assert (effect.verdict, opposite.verdict, noise.verdict) == (C.REPRODUCES, C.DOES_NOT_REPRODUCE,
                                                                 C.INCONCLUSIVE)
    assert noise.low < 0 < noise.high
    # pairing is what finds the effect: Welch's unpaired test on the same numbers sees nothing
    assert welch_p(base - 0.1, base) > 0.5


def test_threshold_claims_compare_one_arm_with_the_stated_value():
    assert C.decide([0.8, 0.9, 0.85], direction="greater", threshold=0.5).verdict == C.REPRODUCES
    short = C.decide([0.1, 0.2, 0.15], direction="greater", threshold=0.5)  # entirely short of the threshold
    assert short.verdict == C.DOES_NOT_REPRODUCE and short.high < 0
    assert C.decide([0.3, 0.9, 0.6], direction="greater", threshold=0.5).verdict == C.INCONCLUSIVE
    same = C.decide([3.0, 3.0, 3.0], [1.0, 1.0, 1.0], direction="greater")  # no spread: the sign decides
    assert (same.verdict, same.effect, same.p) == (C.REPRODUCES, 2.0, 0.0)


def test_bootstrap_is_scipys_percentile_interval_of_the_mean_difference():
    d = np.array([-0.3, -0.1, -0.25, 0.05, -0.2])
    v = C.decide(d, np.zeros_like(d), direction="less", test="bootstrap", alpha=0.05, seed=3)
    t = C.decide(d, np.zeros_like(d), direction="less", test="paired-t", alpha=0.05)
    assert d.min() <= v.low < v.high <= d.max() and v.effect == pytest.approx(d.mean())
    assert (v.low, v.high) != pytest.approx((t.low, t.high))  # a different interval from the t one
    # the p-value is the share of resampled means on the wrong side, computed here by hand from the same draws
    again = C.decide(d, np.zeros_like(d), direction="less", test="bootstrap", alpha=0.05, seed=3)
    assert (again.low, again.high, again.p) == (v.low, v.high, v.p)  # seeded: reproducible
    assert 0 <= v.p < 0.05 and v.verdict == C.REPRODUCES


def test_a_diverged_seed_drops_its_pair_and_two_missing_leave_it_inconclusive():
    v = C.decide([1.0, math.nan, 1.2, 1.1], [2.0, 2.1, 2.2, 2.05], direction="less")
    assert v.n == 3 and v.verdict == C.REPRODUCES
    assert C.decide([1.0, math.nan], [2.0, 2.0], direction="less").verdict == C.INCONCLUSIVE


def test_declarations_are_checked_with_the_parameter_and_its_range():
    with pytest.raises(ConfigError, match=r"seeds=1 is invalid; seeds must be an integer in \[2, 20\]"):
        fake_claim([1.0], [2.0])
    with pytest.raises(ConfigError, match="direction='up' is invalid"):
        fake_claim([1, 2], [2, 3], direction="up")
    with pytest.raises(ConfigError, match="threshold"):
        fake_claim([1, 2], [2, 3], threshold=0.5)
    with pytest.raises(ConfigError, match="test='welch' is invalid"):
        fake_claim([1, 2], [2, 3], test="welch")
    with pytest.raises(ConfigError, match="statistic='nope' is invalid"):
        fake_claim([1, 2], [2, 3], statistic="nope").check_names()
    assert fake_claim([1, 2], [2, 3]).digest() != fake_claim([1, 2], [2, 3], seeds=2, alpha=0.1).digest()


# --------------------------------------------------------------------------------------------- end to end


def test_a_claim_runs_its_declared_seeds_for_every_arm_and_its_declared_test():
    claim = fake_claim([0.1, 0.3, 0.2, 0.15], [0.4, 0.5, 0.45, 0.5])  # seeds=4
    result = C.run_claim(claim)
    assert result.seeds == [0, 1, 2, 3]
    for key, variant in (("a", A), ("b", B)):
        assert [r.config["seed"] for r in result.runs[key]] == [0, 1, 2, 3]
        assert {r.variant for r in result.runs[key]} == {variant}
        assert all(r.config["steps"] == 2 for r in result.runs[key])
    assert result.values == {"a": [0.1, 0.3, 0.2, 0.15], "b": [0.4, 0.5, 0.45, 0.5]}
    assert result.verdict.verdict == C.REPRODUCES and result.verdict.test == "paired-t"
    boot = C.run_claim(dataclasses.replace(claim, test="bootstrap"))
    assert boot.verdict.test == "bootstrap"
    assert (boot.verdict.low, boot.verdict.high) == pytest.approx(
        (lambda v: (v.low, v.high))(C.decide(boot.values["a"], boot.values["b"], direction="less", test="bootstrap",
                                             seed=int(boot.claim.digest(), 16) % 2**31)))
    assert (boot.verdict.low, boot.verdict.high) != pytest.approx((result.verdict.low, result.verdict.high))
    fig = result.figure()
    assert [list(t.y) for t in fig.data[:2]] == [[0.1, 0.3, 0.2, 0.15], [0.4, 0.5, 0.45, 0.5]]


@pytest.mark.parametrize("a,b,expected", [
    ([0.9, 0.8, 0.85], [0.2, 0.3, 0.25], C.DOES_NOT_REPRODUCE),  # constructed to fail: a is worse on every seed
    ([0.3, 0.5, 0.2], [0.4, 0.3, 0.35], C.INCONCLUSIVE),  # constructed noise
    ([0.1, 0.2, 0.15], [0.3, 0.41, 0.36], C.REPRODUCES),  # a constructed true effect
])
def test_constructed_claims_end_to_end(a, b, expected):
    assert C.run_claim(fake_claim(a, b)).verdict.verdict == expected


# ---------------------------------------------------------------------------------------------- the ledger


def _fake_result(claim: Claim, a, b) -> R.ClaimResult:
    v = C.decide(a, b, direction=claim.direction, test=claim.test, alpha=claim.alpha)
    return R.ClaimResult(claim, list(range(len(a))), {"a": list(a), "b": list(b)}, v, 1.5)


def test_the_ledger_goes_stale_when_a_declaration_changes_or_is_missing(tmp_path, monkeypatch):
    one, two = fake_claim([0.1, 0.2, 0.3], [0.5, 0.6, 0.7]), fake_claim([1, 2, 3], [1, 2, 3], name="other")
    monkeypatch.setattr(R, "declared", lambda: [one, two])
    R.write_ledger([_fake_result(one, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7])], tmp_path)
    assert R.stale_claims(tmp_path) == ["other: declared but not in docs/claims.json"]
    R.write_ledger([_fake_result(two, [1, 2, 3], [1, 2.5, 3])], tmp_path)  # merged: `one` keeps its record
    assert R.stale_claims(tmp_path) == []
    record = json.loads((tmp_path / R.LEDGER_JSON).read_text())
    assert set(record["claims"]) == {"fake", "other"} and record["claims"]["fake"]["digest"] == one.digest()
    assert {"torch", "transformers", "peft"} <= set(record["versions"]) and record["commit"]
    text = (tmp_path / R.LEDGER_MD).read_text()
    assert "| [fake](#fake) |" in text and "**reproduces**" in text and "**inconclusive**" in text
    changed = dataclasses.replace(one, seeds=4)
    monkeypatch.setattr(R, "declared", lambda: [changed, two])
    assert R.stale_claims(tmp_path) == ["fake: its declaration changed since its verdict was recorded"]
    monkeypatch.setattr(R, "declared", lambda: [one, two])
    (tmp_path / R.LEDGER_MD).write_text(text.replace("**inconclusive**", "**reproduces**"))  # a hand edit
    assert R.stale_claims(tmp_path) == ["docs/CLAIMS.md is not the rendering of docs/claims.json"]
    assert main(["claims", "--check", "--root", str(tmp_path)]) == 2


def test_the_repository_ledger_is_up_to_date_with_the_declarations():
    assert R.stale_claims(ROOT) == [], "run `workbench claims` to regenerate docs/CLAIMS.md and docs/claims.json"


def test_every_declared_claim_names_a_registered_method_and_its_paper():
    import workbench as wb
    from workbench.recipes import recipe_names

    declared = C.claims()
    assert len(declared) >= 5 and len({c.name for c in declared}) == len(declared)
    methods = set(wb.variant_table()["name"]) | set(recipe_names())
    for c in declared:
        assert c.variant in methods and c.statement and c.source, c.name
        assert c.seeds >= 3 and c.alpha == 0.05, c.name


def test_cli_lists_the_claims_with_their_recorded_verdicts(capsys):
    assert main(["claims", "--list", "--root", str(ROOT)]) == 0
    out = capsys.readouterr().out
    record = R.load_record(ROOT)["claims"]
    for c in C.claims():
        line = next(row for row in out.splitlines() if row.strip().startswith(c.name))
        assert (record[c.name]["verdict"] if c.name in record else "not run") in line


def test_claims_for_gives_the_learn_tab_each_claim_with_its_verdict(tmp_path, monkeypatch):
    one = fake_claim([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    monkeypatch.setattr(R, "declared", lambda: [one])
    import workbench.claims.registry as reg

    monkeypatch.setattr(reg, "claims", lambda: [one])
    assert R.claims_for("lora", tmp_path) == [(one, None)]  # never run
    R.write_ledger([_fake_result(one, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7])], tmp_path)
    [(claim, entry)] = R.claims_for("lora", tmp_path)
    assert claim is one and entry["verdict"] == C.REPRODUCES and entry["values"] == {A: [0.1, 0.2, 0.3],
                                                                                      B: [0.5, 0.6, 0.7]}
    assert R.claims_for("dora", tmp_path) == []


# ------------------------------------------------------------------------------ non-inferiority margin (two arms)


def test_a_margin_shifts_the_effect_towards_the_claimed_side_and_can_decide_the_verdict():
    a, b = np.array([0.86, 0.90, 0.87, 0.88]), np.array([0.87, 0.88, 0.875, 0.87])  # a − b noisy around 0
    plain = C.decide(a, b, direction="greater")
    shifted = C.decide(a, b, direction="greater", margin=0.05)
    assert plain.verdict == C.INCONCLUSIVE and shifted.verdict == C.REPRODUCES
    assert shifted.effect == pytest.approx(float(np.mean(a - b)) + 0.05)  # the recorded effect includes the margin
    assert (shifted.low, shifted.high) == pytest.approx((plain.low + 0.05, plain.high + 0.05))
    # "less" (a lower-is-better statistic): a may be higher than b by less than the margin
    less = C.decide(b, a, direction="less", margin=0.05)
    assert less.verdict == C.REPRODUCES and less.effect == pytest.approx(float(np.mean(b - a)) - 0.05)
    # a margin too small for the gap leaves it failing
    assert C.decide(a - 0.2, b, direction="greater", margin=0.05).verdict == C.DOES_NOT_REPRODUCE
    with pytest.raises(ConfigError, match="margin=0.1 is invalid; a margin needs two arms"):
        C.decide(a, direction="greater", threshold=0.5, margin=0.1)
    with pytest.raises(ConfigError, match=r"margin=-0.1 is invalid; margin must be a finite number ≥ 0"):
        C.decide(a, b, direction="greater", margin=-0.1)


def test_a_margin_claim_end_to_end_records_and_renders_the_margin(tmp_path, monkeypatch):
    a, b = [0.86, 0.90, 0.87, 0.88], [0.87, 0.88, 0.875, 0.87]
    without = C.run_claim(fake_claim(a, b, direction="greater"))
    claim = fake_claim(a, b, direction="greater", margin=0.05)
    result = C.run_claim(claim)
    assert (without.verdict.verdict, result.verdict.verdict) == (C.INCONCLUSIVE, C.REPRODUCES)
    rec = result.record()
    assert rec["margin"] == 0.05 and rec["effect_value"] == pytest.approx(np.mean(np.subtract(a, b)) + 0.05)
    assert rec["effect"] == f"test-table({A}) − test-table({B}) > −0.05"
    assert fake_claim(a, b, margin=0.05).describe_effect() == f"test-table({A}) − test-table({B}) < 0.05"
    monkeypatch.setattr(R, "declared", lambda: [claim])
    R.write_ledger([result], tmp_path)
    text = (tmp_path / R.LEDGER_MD).read_text()
    assert "> −0.05 (non-inferiority margin 0.05, stated in advance)" in text and R.stale_claims(tmp_path) == []


def test_margin_is_two_arm_only_and_new_fields_keep_old_digests():
    with pytest.raises(ConfigError, match="margin=0.05 is invalid; a margin needs two arms"):
        Claim(name="one", arms={"a": (A, {})}, threshold=0.5, margin=0.05)
    with pytest.raises(ConfigError, match=r"margin=-0.05 is invalid; margin must be"):
        fake_claim([1, 2], [2, 3], margin=-0.05)
    # the fields added later are left out of the digest at their defaults: claims declared before keep their verdicts
    rec = fake_claim([1, 2], [2, 3]).record()
    assert not {"margin", "experiment", "experiment_options"} & set(rec)
    assert "margin" in fake_claim([1, 2], [2, 3], margin=0.01).record()


# ----------------------------------------------------------------------------------------- registered experiments


@C.register_experiment("test-experiment", "constructed values per arm and seed, no training (tests only)")
def _experiment(claim, seed, table):
    return {k: table[k][seed] for k in claim.arms}


def test_a_claim_with_an_experiment_runs_it_per_seed_instead_of_training(tmp_path, monkeypatch):
    table = {"a": [0.1, 0.2, 0.15], "b": [0.3, 0.41, 0.36]}
    claim = fake_claim([0, 0, 0], [0, 0, 0], statistic_options={}, experiment="test-experiment",
                       experiment_options={"table": table}, task="")
    result = C.run_claim(claim)
    assert result.values == table and result.runs == {} and result.verdict.verdict == C.REPRODUCES
    assert claim.describe_effect() == f"test-experiment({A}) − test-experiment({B}) < 0"
    rec = result.record()
    assert rec["experiment"] == "test-experiment" and rec["experiment_options"] == {"table": table}
    monkeypatch.setattr(R, "declared", lambda: [claim])
    R.write_ledger([result], tmp_path)
    assert "- experiment `test-experiment` (options {'table':" in (tmp_path / R.LEDGER_MD).read_text()
    with pytest.raises(ConfigError, match="experiment='nope' is invalid; experiment must be one of"):
        fake_claim([1, 2], [2, 3], experiment="nope").check_names()
    with pytest.raises(ConfigError, match="experiment_options=.* is invalid without an experiment"):
        fake_claim([1, 2], [2, 3], experiment_options={"x": 1})


def test_the_polynomial_approximates_attention_below_the_threshold_and_not_above():
    from workbench.probes.limits import taylor_attention_error

    below, above = (taylor_attention_error(g, seq_len=256, seed=1) for g in (0.5, 2.0))
    assert below < 1e-3 < 0.05 < above
    assert taylor_attention_error(0.5, seq_len=256, seed=1) == below  # the seed fixes the draw


def test_cli_refuses_a_thread_count_below_one(capsys):
    assert main(["claims", "lora-sb-beats-lora-xs", "--threads", "0", "--root", str(ROOT)]) == 2
    assert "--threads=0 is invalid; --threads must be an integer ≥ 1" in capsys.readouterr().err


def test_the_unified_study_experiment_runs_the_tuned_study_on_the_seed_and_takes_each_arms_median(monkeypatch):
    """The unified-study experiment (He et al.'s claim): one tuned study per seed, that seed as training and data seed,
    and each arm's value the median of its variants' test metric. A real small study, checked against the study's
    own summary, with a variant whose every run fails left out of the median."""
    import sys

    from workbench.claims.experiments import unified_study

    S = sys.modules["workbench.study"]  # the module (``workbench.study`` the attribute is the function)

    claim = fake_claim([0, 0], [0, 0], statistic_options={}, experiment="unified-study", task="synthetic:lowrank",
                       settings={"steps": 4, "batch_size": 8},
                       arms={"a": ("lora", {"variants": ["lora"]}), "b": ("lora", {"variants": ["dora", "vera",
                                                                                                "pissa"]})})
    calls = []
    real = S.run_study

    def spy(task, variants, **kw):
        st = real(task, variants, **kw)
        calls.append((task, variants, kw, st.summary))
        st.summary.loc[st.summary["variant"] == "pissa", "metric_value_mean"] = math.nan  # as if every run failed
        return st

    monkeypatch.setattr(S, "run_study", spy)
    out = unified_study(claim, 1)
    (task, variants, kw, summary), = calls
    assert task == "synthetic:lowrank" and variants == ["lora", "dora", "vera", "pissa"]
    assert kw["protocols"] == ("tuned",) and kw["seeds"] == [1] and kw["data_seeds"] == [1]
    assert set(summary["split"]) == {"test"}
    metric = dict(zip(summary["variant"], summary["metric_value_mean"]))
    assert out["a"] == metric["lora"]
    assert out["b"] == pytest.approx(np.median([metric["dora"], metric["vera"]]))  # pissa left out
