"""Claims of the low-rank papers (PiSSA, DoRA, LoRA against full fine-tuning) and of two papers about plain LoRA
(ICM-LoRA's generated adapters, Hu et al.'s computational limits, He et al.'s unified study), as data for the ledger
(:mod:`workbench.claims`). The last three run registered experiments (:mod:`workbench.claims.experiments`), not one
training per arm."""

from ...claims.claim import Arm, Claim

#: the unified study's field: bench/study.py's eight variants (issue 19), each at its own tuned rate
STUDY_VARIANTS = ("dora", "pissa", "vera", "fourierft", "loca", "randlora", "adalora")

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
    Claim(name="icm-lora-generates-held-out-loras", variant="lora",
          statement="ICM-LoRA's conditional VAE, fitted on the checkpoints of LoRAs trained at some conditions, "
                    "generates for a held-out condition a LoRA closer to the one trained there than any stored "
                    "checkpoint.",
          source="Shao et al. (ICM-LoRA), IJCAI 2025, §4, Tables 1-3", task="synthetic-family:path",
          task_options={"dim": 16, "rank": 2, "path": "rotate"},
          arms={"a": Arm("lora", {"method": "generated"}, label="generated"),
                "b": Arm("lora", {"method": "nearest"}, label="nearest checkpoint")},
          experiment="icm-lora-held-out", experiment_options={"column": "recon_dw", "steps": 200, "gen_steps": 1500},
          direction="less",
          note="per seed, bench/icm_lora.py's run (workbench.generate.heldout): LoRAs r = 2 trained 200 steps at t = "
               "0, 1/6, ..., 1 (last 4 checkpoints each, 28 in all), a small MLP-CVAE fitted 1,500 steps, and at "
               "the held-out t = 1/12, 5/12, 9/12 the relative distance ‖ΔW − ΔW_trained‖_F / ‖ΔW_trained‖_F to "
               "a LoRA trained at t (same seed), averaged over the three; generated at z = 0 against the final "
               "checkpoint of the nearest trained condition. Not the paper's Florence-2 / LLM scale."),
    Claim(name="attention-polynomial-fails-above-sqrt-log-l", variant="lora",
          statement="LoRA's gradients on attention can be approximated in almost-linear time only while the "
                    "entries of XW_Q and XW_K stay below √(log L): there a low-degree polynomial approximates "
                    "exp(QKᵀ), above it no such algorithm exists (under SETH).",
          source="Hu, Su, Kuo, Song, Liu, ICLR 2025, Thm 3.1 (efficient regime) and Thm 4.1 (hardness)", task="",
          arms={"a": Arm("lora", {"gamma_factor": 0.5}, label="Γ=0.5·√ln L"),
                "b": Arm("lora", {"gamma_factor": 2.0}, label="Γ=2·√ln L")},
          experiment="attention-polynomial-error", experiment_options={"seq_len": 1024, "degree": 4},
          direction="less", seeds=10,
          note="no training, so 10 seeds (0.1 s each; the error above the threshold varies widely between draws): "
               "per seed X ∈ R^{L×d} and W_Q, W_K (L = 1024, d = ⌈log₂ L⌉ = 10, standard normal from "
               "the seed), scaled so that max|XW_Q| = max|XW_K| = Γ, and the degree-4 Taylor polynomial of exp "
               "against A = exp(QKᵀ/d), error ‖Â − A‖_max / ‖A‖_max (workbench.probes.limits."
               "taylor_attention_error). This tests the approximation mechanism behind Thm 3.1 (Alman & Song's "
               "polynomial method), not the SETH lower bound of Thm 4.1, which no experiment can test."),
    Claim(name="tuned-lora-matches-most-variants", variant="lora",
          statement="With its learning rate tuned, vanilla LoRA matches or surpasses the performance of most of its "
                    "variants.",
          source="He et al. 2026, A Unified Study of LoRA Variants (LoRAFactory), arXiv:2601.22708, §5 and the "
                 "abstract's findings", task="digits:rotate",
          arms={"a": Arm("lora", {"variants": ["lora"]}, label="lora tuned"),
                "b": Arm("lora", {"variants": list(STUDY_VARIANTS)}, label="median of 7 variants tuned")},
          experiment="unified-study", experiment_options={"budget": 7_168}, direction="greater", margin=0.02,
          note="per seed, bench/study.py's tuned protocol on digits:rotate (workbench.study.run_study): LoRA and "
               "the seven other variants of the study (DoRA, PiSSA, VeRA, FourierFT, LoCA, RandLoRA, AdaLoRA) at "
               "a matched budget of 7,168 trainable parameters (LoRA r = 4), 150 steps, each at the best of its "
               "three swept rates (0.3×, 1× and 3× its base rate) on val, scored on test; the seed is both the "
               "training seed and the data seed (which held-out digits validate and which test). b is the median "
               "of the seven variants' test accuracies: LoRA within the margin of the median or above it is "
               "within the margin of, or above, at least half of them ('most'). Margin 0.02 (two points of "
               "accuracy), fixed before the claim was run. The paper tunes on NLG, NLU and image classification "
               "at scale, over more hyperparameters than the rate."),
)
