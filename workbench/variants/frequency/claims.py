"""Claims of the frequency-domain papers (LoCA against FourierFT), as data for the ledger (:mod:`workbench.claims`).
Settings follow ``tests/test_frequency_variants.py``."""

from ...claims.claim import Arm, Claim

CLAIMS = (
    Claim(name="loca-beats-fourierft", variant="loca",
          statement="LoCA's learned DCT locations fit better than FourierFT's random frequencies with the same "
                    "number of coefficients.",
          source="Du et al. 2025 (LoCA), §4-5, Table 2", task="synthetic:dct", settings={"steps": 300, "lr": 1e-2},
          arms={"a": Arm("loca", {"n": 128, "loc_lr": 1e-2, "search_fraction": 0.5}),
                "b": Arm("fourierft", {"n_frequency": 128, "init_zero": True})},
          statistic="metric", direction="less",
          note="final test relative error on a truth with 128 non-zero DCT coefficients per layer; both train "
               "2·128 coefficients."),
)

CLAIMS += (
    Claim(name="qwha-recovers-quantization-error", variant="qwha",
          statement="QWHA's Walsh-Hadamard adapter, initialised by AdaAlloc and a least-squares refinement, "
                    "corrects part of the quantization error of a 4-bit base before fine-tuning.",
          source="QWHA, §3.2-3.3", task="synthetic:fullrank", settings={"steps": 1, "lr": 1e-6},
          arms={"a": Arm("qwha", {"r": 4, "bits": 4, "group_size": 32, "calib_batches": 8})},
          statistic="quant_error_recovered", direction="greater", threshold=0.0,
          note="share of ‖W0 − Q‖ the adapter corrects right after prepare() (one step at lr 1e-6)."),
)
