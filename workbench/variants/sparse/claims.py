"""Claims of the sparse papers (SLTrain, LT-SFT composition), as data for the ledger (:mod:`workbench.claims`).
Settings follow ``tests/test_quant_sparse.py`` and ``bench/composition.py``."""

from ...claims.claim import Arm, Claim
from ...claims.experiments import composition_claim

TASK_OPTIONS = {"dim": 32, "n_train": 1024, "n_val": 256, "layout": "parallel"}

CLAIMS = (
    Claim(name="sltrain-low-rank-plus-sparse-beats-sparse-only", variant="sltrain",
          statement="SLTrain's low-rank plus sparse split fits a low-rank + sparse update better than the same "
                    "parameter count spent on the sparse part alone.",
          source="Han et al. 2024, §3, Table 2", task="synthetic:lowrank+sparse", task_options=TASK_OPTIONS,
          settings={"steps": 300, "lr": 1e-2}, presets=False,
          arms={"a": Arm("sltrain", {"r": 4, "delta": 0.125}, label="sltrain r=4, δ=1/8"),
                "b": Arm("sltrain", {"r": 0, "delta": 0.375}, label="sparse only, δ=3/8")},
          statistic="metric", direction="less", note="final test relative error; both train 768 numbers."),
    composition_claim("sft", statement="Adding a language (domain) sparse fine-tuning mask's difference to a task "
                                       "mask's, θ0 + φ_domain + φ_task, transfers to the target pair better than "
                                       "zero-shot transfer with either update alone.",
                      how="LT-SFT keeps k = 2,144 entries of the body's linear weights (the adapters' budget), half "
                          "the steps dense with L1 0.1; the sparse differences are added."),
)
