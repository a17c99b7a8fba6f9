"""Claims of the optimizer recipes' papers (LoRA-GGPO, LoRA-Pro, AltLoRA, ALLoRA), as data for the ledger
(:mod:`workbench.claims`). Settings follow ``bench/sharpness.py``."""

from ..claims.claim import Arm, Claim

HIGH_RANK = {"r": 32, "alpha": 32.0}  # r = α far above the truth's rank 4: the paper's high-rank regime, scaled

CLAIMS = (
    Claim(name="lora-ggpo-flattens-the-minimum", variant="lora-ggpo",
          statement="LoRA-GGPO's gradient- and weight-norm-guided perturbation steers high-rank LoRA to a flatter "
                    "minimum than plain AdamW.",
          source="Chang et al. 2025, §3-5, Fig. 1", task="synthetic:lowrank", settings={"steps": 300, "lr": 5e-2},
          arms={"a": Arm("lora", HIGH_RANK, {"recipe": "lora-ggpo"}, label="lora+lora-ggpo"),
                "b": Arm("lora", HIGH_RANK, label="lora (adamw)")},
          statistic="sharpness", direction="less",
          note="Keskar et al.'s ε-sharpness (%, ε = 1e-3) of the trained adapter (workbench.probes.landscape)."),
)

CLAIMS += (
    Claim(name="lora-pro-follows-the-full-gradient", variant="lora-pro",
          statement="LoRA-Pro adjusts the factor gradients so the low-rank step follows the full-weight gradient "
                    "more closely than AdamW on the factors.",
          source="Wang et al. 2024 (LoRA-Pro), §3, Thm 2.1", task="synthetic:lowrank",
          settings={"steps": 60, "lr": 1e-2, "every": 5}, probes=["gradients"],
          arms={"a": Arm("lora", {"r": 4}, {"recipe": "lora-pro"}, label="lora+lora-pro"),
                "b": Arm("lora", {"r": 4}, label="lora (adamw)")},
          statistic="mean_logged", statistic_options={"key": "step_grad_cosine"}, direction="greater",
          note="mean cosine between the step taken and the full-weight gradient step (gradients probe), "
               "tests/test_recipes.py."),
    Claim(name="altlora-follows-the-full-gradient", variant="altlora",
          statement="AltLoRA's alternating projected steps follow the full-weight gradient more closely than AdamW.",
          source="AltLoRA, §3", task="synthetic:lowrank",
          settings={"steps": 60, "lr": 1e-2, "every": 5}, probes=["gradients"],
          arms={"a": Arm("lora", {"r": 4}, {"recipe": "altlora"}, label="lora+altlora"),
                "b": Arm("lora", {"r": 4}, label="lora (adamw)")},
          statistic="mean_logged", statistic_options={"key": "step_grad_cosine"}, direction="greater",
          note="as lora-pro-follows-the-full-gradient."),
    Claim(name="allora-beats-lora", variant="allora",
          statement="ALLoRA (no dropout, no scaling factor, a per-row learning rate that shrinks with the row's norm) "
                    "ends more accurate than LoRA trained with AdamW.",
          source="Huang & Balestriero 2024, §4, Tables 1-2 (+0.3% on average over LoRA)", task="digits:rotate",
          settings={"steps": 150, "lr": 1e-2},
          arms={"a": Arm("lora", {"r": 8}, {"recipe": "allora"}, label="lora+allora"),
                "b": Arm("lora", {"r": 8}, label="lora (adamw)")},
          statistic="metric", direction="greater",
          note="test accuracy on digits:rotate after 150 steps at one rate, 1e-2, for both; the paper's gain is "
               "0.3-0.8 points, about the seed spread here, so 3 seeds may not decide it."),
)
