"""Claims of the rank-allocation papers (SoRA, AdaLoRA, Bayesian-LoRA, IncreLoRA, LoRA-Squeeze, CoDyRA,
DiffoRA), as data for
the ledger (:mod:`workbench.claims`). Settings follow ``tests/test_rank_variants.py``, ``bench/lora_squeeze.py`` and
``bench/continual_digits.py``."""

from ...claims.claim import Arm, Claim

MIXED = "synthetic:mixed"  # true ranks 8, 1, 16, 0, 4, 2 over six layers
ALLOCATION = "Spearman's ρ between each module's allocated rank and its true rank, over the six modules"

CLAIMS = (
    Claim(name="sora-prunes-unneeded-ranks", variant="sora",
          statement="SoRA's L1-proximal gates drive the ranks a module does not need to exactly zero, so the kept "
                    "rank follows what each module needs.",
          source="Ding et al. 2023, §3.2-3.3 (Eq. 6-7), Fig. 4", task=MIXED,
          settings={"steps": 400, "lr": 1e-2}, arms={"a": Arm("sora", {"r": 16, "lam": 0.5})},
          statistic="allocation_spearman", direction="greater", threshold=0.0,
          note=f"{ALLOCATION}; 400 steps at λ = 0.5 (the synthetic preset)."),
    Claim(name="adalora-allocation-follows-true-ranks", variant="adalora",
          statement="AdaLoRA's sensitivity-based budget gives more rank to the modules whose update needs it.",
          source="Zhang et al. 2023, §3.2-3.3, Fig. 1", task=MIXED,
          settings={"steps": 800, "lr": 3e-2},
          arms={"a": Arm("adalora", {"r": 16, "target_r": 6, "tinit": 200, "tfinal": 100, "delta_t": 10})},
          statistic="allocation_spearman", direction="greater", threshold=0.0, note=ALLOCATION),
    Claim(name="bayesian-lora-allocation-follows-true-ranks", variant="bayesian-lora",
          statement="Bayesian-LoRA's learned gates keep rank where the update needs it and prune it elsewhere.",
          source="Meo et al. 2024, §3, Fig. 3", task=MIXED,
          settings={"steps": 800, "lr": 3e-2}, arms={"a": Arm("bayesian-lora", {"r": 16, "prior": 0.03})},
          statistic="allocation_spearman", direction="greater", threshold=0.0, note=ALLOCATION),
    Claim(name="increlora-allocation-on-chained-layers", variant="increlora",
          statement="IncreLoRA's importance score grows rank where it is needed, starting from rank 1.",
          source="Zhang et al. 2023 (IncreLoRA), §3, Fig. 3", task=MIXED, task_options={"layout": "chain"},
          settings={"steps": 600, "lr": 1e-2},
          arms={"a": Arm("increlora", {"target_rank": 6, "warmup": 100, "interval": 60, "top_h": 2})},
          statistic="allocation_spearman", direction="greater", threshold=0.0,
          note=f"{ALLOCATION}; on chained layers IncreLoRA rewards the layers that compensate for their neighbours "
               "(tests/test_rank_variants.py), the known negative."),
    Claim(name="lora-squeeze-beats-training-at-target-rank", variant="lora-squeeze",
          statement="A rank-16 adapter squeezed to rank 4 (then briefly trained on) beats one trained at rank 4 "
                    "from the start.",
          source="Vulić et al. 2026, §4, Table 1", task="synthetic:fullrank", settings={"steps": 150, "lr": 1e-2},
          arms={"a": Arm("lora-squeeze", {"r": 16, "target_r": 4, "mode": "post"}, label="squeeze 16→4"),
                "b": Arm("lora", {"r": 4, "alpha": 4.0}, label="lora r=4")},
          statistic="metric", direction="less",
          note="final test relative error, 150 steps (bench/lora_squeeze.py; at 600 steps LoRA r=4 catches up)."),
    Claim(name="codyra-forgets-less-than-lora", variant="codyra",
          statement="CoDyRA's adaptive low rank (gates soft-thresholded to zero, pruned and merged after each task) "
                    "forgets earlier tasks less than fixed-rank LoRA at similar new-task accuracy.",
          source="Lu et al. 2024-25, §3-4 (MTIL, Transfer/Last)", task="digits:continual",
          settings={"steps": 200, "lr": 1e-2},
          arms={"a": Arm("codyra", {"r": 8, "kappa_max": 0.02}), "b": Arm("lora", {"r": 8, "alpha": 8.0})},
          experiment="continual-forgetting", experiment_options={"stage_key": "own", "split": "test"},
          direction="less", seeds=6,
          note="digits:continual (rotate → invert → new classes 5-9), each stage's adapter merged before the next, "
               "no replay, as bench/continual_digits.py (200 steps per stage, lr 1e-2, r = 8). The value is the "
               "forgetting of stage 0: its test accuracy among its own five classes "
               "(task-incremental, CoDyRA's MTIL protocol) right after stage 0 minus after the last stage. The "
               "'similar new-task accuracy' half is not tested (the bench prints each stage's accuracy). 6 seeds: "
               "the forgetting varies by ±0.1 between seeds, and 3 left the interval ±0.22 wide."),
    Claim(name="diffora-keeps-the-modules-that-need-an-update", variant="diffora",
          statement="DiffoRA's differentiable module selection (a continuous relaxation of the module-wise "
                    "adaptation matrix, then discretised) keeps the modules that need an update.",
          source="Jiang, Wang, Yuan 2025, §3 (DMRA), Table 1", task=MIXED,
          settings={"steps": 400, "lr": 1e-2, "every": 50}, presets=False,
          arms={"a": Arm("diffora", {"r": 8, "keep": 2 / 6}, label="diffora keep 2 of 6")},
          statistic="allocation_spearman", direction="greater", threshold=0.0,
          note=f"{ALLOCATION} (a kept module has rank 8, a dropped one 0), as tests/test_rank_variants.py; keeping "
               f"the two modules of largest true rank (16 and 8) gives ρ = 0.83. The paper's own claim is accuracy "
               f"on GLUE against other adaptive-rank methods; this tests the selection it rests on."),
)
