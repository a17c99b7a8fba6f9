"""Claims of the random- and learned-basis papers (RandLoRA, LoRA-SB), as data for the ledger
(:mod:`workbench.claims`). Settings follow ``tests/test_basis_variants.py``."""

from ...claims.claim import Arm, Claim

FLAT = {"decay": 0.0}  # synthetic:fullrank with a flat spectrum: every direction matters

CLAIMS = (
    Claim(name="randlora-update-is-full-rank", variant="randlora",
          statement="RandLoRA's update is full rank while LoRA's with the same parameter count is not.",
          source="Albert et al. 2025, §3, Fig. 1", task="synthetic:fullrank", task_options=FLAT,
          settings={"steps": 50},
          arms={"a": Arm("randlora", {"r": 8, "alpha": 160.0}, {"lr": 1e-3}),
                "b": Arm("lora", {"r": 4, "alpha": 4.0}, {"lr": 3e-3}, label="lora r=4")},
          statistic="min_update_rank", direction="greater",
          note="the smallest numerical rank of ΔW over the two 64×64 layers; LoRA r = 4 has the same budget."),
    Claim(name="randlora-beats-lora-on-full-rank-truth", variant="randlora",
          statement="At equal parameters, RandLoRA's full-rank update fits a full-rank target better than LoRA.",
          source="Albert et al. 2025, §5, Table 2", task="synthetic:fullrank", task_options=FLAT,
          settings={"steps": 300},
          arms={"a": Arm("randlora", {"r": 8, "alpha": 160.0}, {"lr": 1e-3}),
                "b": Arm("lora", {"r": 4, "alpha": 4.0}, {"lr": 3e-3}, label="lora r=4")},
          statistic="metric", direction="less", note="final test relative error."),
    Claim(name="lora-sb-beats-lora-xs", variant="lora-sb",
          statement="LoRA-SB's initialisation from the first gradient puts the r×r trainable core in the right "
                    "subspace, so it ends ahead of LoRA-XS with the same r² parameters.",
          source="Ponkshe et al. 2024, §3-4, Fig. 2", task="synthetic:lowrank", settings={"steps": 200, "lr": 1e-2},
          arms={"a": Arm("lora-sb", {"r": 8}), "b": Arm("lora-xs", {"r": 8})},
          statistic="final_loss", direction="less", note="final validation loss after 200 steps."),
)
