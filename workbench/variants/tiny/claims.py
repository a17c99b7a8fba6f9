"""Claims of the tiny-update papers (Comp-LoRA, LoLDU, SVFit, Block-LoRA, S2-LoRA, TLoRA), as data for the ledger
(:mod:`workbench.claims`).

The parameter-efficiency claims run on ``digits:rotate`` like VeRA's, NOLA's and Uni-LoRA's (``basis/claims.py``,
the same 0.05 non-inferiority margin where the paper says "comparable" or "matches"; none where it says "beats"),
each method at the rate its sweep over 1e-2, 3e-2, 1e-1 chose on the *validation* split for seed 0
(``compare(lr="sweep")``): LoRA, Block-LoRA, S2-LoRA, TLoRA and AdaLoRA 1e-2, LoLDU and SVFit 1e-1.
"""

from ...claims.claim import Arm, Claim
from ..basis.claims import MARGIN, accuracy_claim

PER = ("test accuracy on digits:rotate (its test split), 150 steps, 3 seeds, against LoRA r = 8 (6,144 trainable "
       "parameters) at 1e-2")

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
    accuracy_claim("loldu-matches-lora-with-far-fewer-parameters",
                   "LoLDU, training only r diagonal entries of W0's pivoted LDU factors, performs comparably to LoRA "
                   "with thousands of times fewer trainable parameters.",
                   "Shi et al. 2024, abstract and §4", Arm("loldu", {}, {"lr": 1e-1}),
                   f"{PER}; non-inferiority within {MARGIN}. LoLDU trains 128 parameters (0.021×)."),
    accuracy_claim("svfit-beats-lora-with-fewer-parameters",
                   "SVFit, training only the top-r singular values of W0, beats LoRA with 16× fewer trainable "
                   "parameters.",
                   "Sun et al. 2024, abstract and §4", Arm("svfit", {}, {"lr": 1e-1}),
                   f"{PER}; SVFit trains 64 parameters (0.010×).", margin=0.0),
    accuracy_claim("block-lora-competitive-with-fewer-parameters",
                   "Block-LoRA, sharing one down-projection across the blocks of its partitioned LoRA, is competitive "
                   "with LoRA at fewer trainable parameters.",
                   "Zhou et al. 2025 (One Head Eight Arms), abstract and §4", Arm("block-lora", {}, {"lr": 1e-2}),
                   f"{PER}; non-inferiority within {MARGIN}. Block-LoRA trains 920 parameters (0.15×)."),
    accuracy_claim("s2-lora-matches-adalora-with-fewer-parameters",
                   "S2-LoRA's sparsely shared LoRA matches AdaLoRA in-domain with far fewer trainable parameters.",
                   "Liu, Qin, Peng, Lee, arXiv 2309.11756, §4, Table 1", Arm("s2-lora", {}, {"lr": 1e-2}),
                   "test accuracy on digits:rotate (its test split), 150 steps, 3 seeds, against AdaLoRA at its "
                   f"defaults (9,312 trainable parameters) at 1e-2; non-inferiority within {MARGIN}. S2-LoRA trains "
                   "3,136 (0.34×).", against=Arm("adalora", {}, {"lr": 1e-2})),
    accuracy_claim("tlora-beats-lora-with-fewer-parameters",
                   "TLoRA, a transform of W0 plus a residual low-rank update, beats LoRA with fewer trainable "
                   "parameters.",
                   "Tao et al. ICCV 2025, §4 (SDXL subject-driven generation)", Arm("tlora", {}, {"lr": 1e-2}),
                   f"{PER}; TLoRA trains 1,016 parameters (0.17×). The paper's setting is SDXL image generation.",
                   margin=0.0),
)
