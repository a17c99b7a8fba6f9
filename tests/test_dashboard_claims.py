"""The Learn tab's claims view (issue 25) without a browser: the section lists a variant's claims with the ledger's
verdicts, the rerun is refused on bad input with a message, and :func:`follow` streams the rerun to its verdict."""

from __future__ import annotations

import pytest

from workbench.claims import claims_for
from workbench.dashboard import claims_view as V
from workbench.errors import ConfigError

CLAIM = "lora-sb-beats-lora-xs"  # the quickest claim: 2 arms × 3 seeds of 200 steps, about 2 s


def test_section_lists_the_variants_claims_with_the_recorded_verdict():
    [(claim, entry)] = [(c, e) for c, e in claims_for("lora-sb", V.LEDGER_ROOT) if c.name == CLAIM]
    text = V.claims_section("lora-sb", "none")
    assert CLAIM in text and claim.source in text
    assert entry is not None and f"**{entry['verdict']}**" in text
    assert CLAIM in V.claim_choices("lora-sb", None)
    recipe_only = V.claims_section(None, "lora-pro")  # a recipe's paper has claims of its own
    assert "lora-pro-follows-the-full-gradient" in recipe_only


def test_a_method_without_claims_says_so():
    text = V.claims_section("lora-xs", "none")
    assert "No claim" in text and "workbench claims --list" in text
    assert V.claim_choices("lora-xs", "none") == []


@pytest.mark.parametrize("name, match", [("", "choose a claim"), ("no-such-claim", "unknown claim")])
def test_rerun_refuses_a_missing_or_unknown_claim(name, match):
    with pytest.raises(ConfigError, match=match):
        V.start_claim(name)


def test_follow_of_no_job_yields_nothing():
    assert list(V.follow(None)) == []


def test_follow_streams_the_rerun_to_the_ledgers_verdict():
    [(_, entry)] = [(c, e) for c, e in claims_for("lora-sb", V.LEDGER_ROOT) if c.name == CLAIM]
    views = list(V.follow(V.start_claim(CLAIM), poll=0.05))
    assert len(views) >= 2, "no progress was shown before the verdict"
    assert all("running" in text for text, _ in views[:-1])
    text, fig = views[-1]
    assert f"**{entry['verdict']}**" in text and "rerun here" in text
    per_seed = [list(trace.y) for trace in fig.data[:2]]  # each arm's value on every seed, as the ledger has them
    assert per_seed == [pytest.approx(v, rel=1e-6) for v in entry["values"].values()]
