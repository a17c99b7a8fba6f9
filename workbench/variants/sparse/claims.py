"""Claims of the sparse papers (SLTrain, LT-SFT composition), as data for the ledger (:mod:`workbench.claims`).
Settings follow ``tests/test_quant_sparse.py`` and ``bench/composition.py``."""

from ...claims.claim import Arm, Claim

COMPOSITION = ("digits (workbench.transfer, as bench/composition.py): base ViT pretrained on upright digits 0-4; "
               "a domain update learned on rotated 0-4 (head frozen) and a task update on upright 0-9 (head "
               "trained), 150 steps each; ten-way accuracy on held-out rotated digits 5-9, which neither saw. b is, "
               "per seed, the better of the two updates alone (zero-shot transfer with one update); the paper's "
               "setting is cross-lingual retrieval with mBERT")
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
    Claim(name="sft-composition-beats-zero-shot-transfer", variant="sft",
          statement="Adding a language (domain) sparse fine-tuning mask's difference to a task mask's, θ0 + φ_domain "
                    "+ φ_task, transfers to the target pair better than zero-shot transfer with either update alone.",
          source="Litschko, Vulić & Glavaš, COLING 2022, §3-5, Tables 2-3", task="",
          arms={"a": Arm("sft", {"models": ["domain + task (composed)"]}, label="sft composed"),
                "b": Arm("sft", {"models": ["domain alone", "task alone"]}, label="sft best single update")},
          experiment="composition-transfer", experiment_options={"method": "sft", "steps": 150},
          direction="greater",
          note=f"{COMPOSITION}. LT-SFT keeps k = 2,144 entries of the body's linear weights (the adapters' budget), "
               f"half the steps dense with L1 0.1; the sparse differences are added."),
)
