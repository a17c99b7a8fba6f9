"""Claims of the tiny-update papers (Comp-LoRA, LoLDU, SVFit, Block-LoRA, S2-LoRA, TLoRA), as data for the ledger
(:mod:`workbench.claims`).

The parameter-efficiency claims run on ``digits:rotate`` like VeRA's, NOLA's and Uni-LoRA's (``basis/claims.py``,
the same 0.05 non-inferiority margin where the paper says "comparable" or "matches"; none where it says "beats"),
each method at the rate its sweep over 1e-2, 3e-2, 1e-1 chose on the *validation* split for seed 0
(``compare(lr="sweep")``): LoRA, Block-LoRA, S2-LoRA, TLoRA and AdaLoRA 1e-2, LoLDU and SVFit 1e-1.
"""

from ...claims.claim import Arm, Claim
from ..basis.claims import LORA, MARGIN

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
    Claim(name="loldu-matches-lora-with-far-fewer-parameters", variant="loldu",
          statement="LoLDU, training only r diagonal entries of W0's pivoted LDU factors, performs comparably to "
                    "LoRA with thousands of times fewer trainable parameters.",
          source="Shi et al. 2024, abstract and §4", task="digits:rotate",
          arms={"a": Arm("loldu", {}, {"lr": 1e-1}), "b": LORA}, statistic="metric", direction="greater",
          margin=MARGIN, note=f"{PER}; non-inferiority within {MARGIN}. LoLDU trains 128 parameters (0.021×)."),
    Claim(name="svfit-beats-lora-with-fewer-parameters", variant="svfit",
          statement="SVFit, training only the top-r singular values of W0, beats LoRA with 16× fewer trainable "
                    "parameters.",
          source="Sun et al. 2024, abstract and §4", task="digits:rotate",
          arms={"a": Arm("svfit", {}, {"lr": 1e-1}), "b": LORA}, statistic="metric", direction="greater",
          note=f"{PER}; SVFit trains 64 parameters (0.010×)."),
    Claim(name="block-lora-competitive-with-fewer-parameters", variant="block-lora",
          statement="Block-LoRA, sharing one down-projection across the blocks of its partitioned LoRA, is "
                    "competitive with LoRA at fewer trainable parameters.",
          source="Zhou et al. 2025 (One Head Eight Arms), abstract and §4", task="digits:rotate",
          arms={"a": Arm("block-lora", {}, {"lr": 1e-2}), "b": LORA}, statistic="metric", direction="greater",
          margin=MARGIN, note=f"{PER}; non-inferiority within {MARGIN}. Block-LoRA trains 920 parameters (0.15×)."),
    Claim(name="s2-lora-matches-adalora-with-fewer-parameters", variant="s2-lora",
          statement="S2-LoRA's sparsely shared LoRA matches AdaLoRA in-domain with far fewer trainable parameters.",
          source="Liu, Qin, Peng, Lee, arXiv 2309.11756, §4, Table 1", task="digits:rotate",
          arms={"a": Arm("s2-lora", {}, {"lr": 1e-2}), "b": Arm("adalora", {}, {"lr": 1e-2})},
          statistic="metric", direction="greater", margin=MARGIN,
          note="test accuracy on digits:rotate (its test split), 150 steps, 3 seeds, against AdaLoRA at its "
               f"defaults (9,312 trainable parameters) at 1e-2; non-inferiority within {MARGIN}. S2-LoRA trains "
               "3,136 (0.34×)."),
    Claim(name="tlora-beats-lora-with-fewer-parameters", variant="tlora",
          statement="TLoRA, a transform of W0 plus a residual low-rank update, beats LoRA with fewer trainable "
                    "parameters.",
          source="Tao et al. ICCV 2025, §4 (SDXL subject-driven generation)", task="digits:rotate",
          arms={"a": Arm("tlora", {}, {"lr": 1e-2}), "b": LORA}, statistic="metric", direction="greater",
          note=f"{PER}; TLoRA trains 1,016 parameters (0.17×). The paper's setting is SDXL image generation."),
)
