"""Claims of the tiny-update papers (Comp-LoRA), as data for the ledger (:mod:`workbench.claims`)."""

from ...claims.claim import Arm, Claim

CLAIMS = (
    Claim(name="comp-lora-avoids-the-principal-subspace", variant="comp-lora",
          statement="Comp-LoRA keeps its update out of W0's principal subspace, the mechanism by which it forgets "
                    "less of the base model than LoRA.",
          source="Comp-LoRA, §3 (complement-subspace projection)", task="synthetic:lowrank",
          settings={"steps": 120, "lr": 1e-2},
          arms={"a": Arm("comp-lora", {"r": 8, "k": 8}), "b": Arm("lora", {"r": 8})},
          statistic="top_subspace_leak", statistic_options={"k": 8}, direction="less",
          note="‖U_kᵀΔW‖/‖ΔW‖ with U_k W0's top-8 left singular vectors (tests/test_tiny_variants.py); the "
               "forgetting itself is measured on digits:continual in bench/continual_digits.py."),
)
