"""The claims ledger (issue 25): each paper's headline claim, declared as data beside its variant, tested in a small
experiment with paired seeds, decided by a declared test, and written to ``docs/CLAIMS.md`` / ``docs/claims.json``.

A claim that does not fit "train each arm, read a statistic" names a registered experiment
(:mod:`workbench.claims.experiments`). ``workbench claims [NAME...]`` runs them; :func:`claims_markdown` and
:func:`rerun` serve the dashboard's Learn tab and the notebooks.
"""

from .claim import Arm, Claim  # noqa: F401
from .experiments import experiment_names, get_experiment, register_experiment  # noqa: F401
from .registry import claim_names, claims, claims_of_variant, get_claim  # noqa: F401
from .runner import (  # noqa: F401
    ClaimResult,
    claims_for,
    load_record,
    render_markdown,
    rerun,
    run_claim,
    run_claims,
    stale_claims,
    write_ledger,
)
from .statistics import get_statistic, register_statistic, statistic_names  # noqa: F401
from .summary import LEDGER_ROOT, claims_markdown, claims_of  # noqa: F401
from .verdict import DOES_NOT_REPRODUCE, INCONCLUSIVE, REPRODUCES, Verdict, decide  # noqa: F401
