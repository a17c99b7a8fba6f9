"""Claims of the low-rank papers (PiSSA, DoRA, LoRA against full fine-tuning), as data for the ledger
(:mod:`workbench.claims`)."""

from ...claims.claim import Arm, Claim

CLAIMS = (
    Claim(name="pissa-converges-faster-early", variant="pissa",
          statement="PiSSA, initialised on W0's principal singular directions, lowers the loss faster than LoRA's "
                    "zero-product initialisation in the first steps.",
          source="Meng et al. 2024, §4, Fig. 3", task="synthetic:lowrank", settings={"steps": 30, "lr": 1e-2},
          arms={"a": Arm("pissa", {"r": 8, "alpha": 8.0}), "b": Arm("lora", {"r": 8, "alpha": 8.0})},
          statistic="train_loss_at", statistic_options={"step": 20, "window": 5}, direction="less",
          note="mean training loss over steps 16-20 at the same rate and rank."),
    Claim(name="dora-decouples-magnitude-and-direction", variant="dora",
          statement="DoRA's magnitude and direction changes are negatively correlated, as in full fine-tuning, "
                    "while LoRA's move together.",
          source="Liu et al. 2024, §3-4.1, Fig. 2", task="synthetic:lowrank", settings={"steps": 200, "lr": 1e-2},
          arms={"a": Arm("dora", {"r": 8}), "b": Arm("lora", {"r": 8})},
          statistic="magnitude_direction_correlation", direction="less",
          note="Pearson's r of ΔM and ΔD across output units at the end of training (the paper plots per-checkpoint "
               "means); claimed lower for DoRA than LoRA."),
    Claim(name="lora-has-intruder-dimensions", variant="lora",
          statement="LoRA's fine-tuned weight has intruder dimensions (top singular vectors unlike any of W0's) that "
                    "full fine-tuning does not.",
          source="Shuttleworth et al. 2024, §3-4, Fig. 1", task="digits:rotate",
          settings={"steps": 150},
          arms={"a": Arm("lora", {"r": 8}, {"lr": 1e-2}), "b": Arm("full", {}, {"lr": 1e-3})},
          statistic="intruders", statistic_options={"k": 10, "threshold": 0.5}, direction="greater",
          note="intruders among the top-10 singular vectors (max |cos| < 0.5 with every singular vector of W0), "
               "summed over the ViT's adapted modules. On the synthetic tasks W0's closely spaced spectrum "
               "(1.5 → 0.5 over 64 values) lets any update rotate its singular vectors, so both arms show "
               "'intruders' there (LoRA 9, full 11 at 200 steps): a pretrained model is needed."),
)
