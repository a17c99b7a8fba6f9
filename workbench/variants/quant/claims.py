"""Claims of the quantization papers (LQ-LoRA; QWHA's is in ``frequency/claims.py``), as data for the ledger."""

from ...claims.claim import Arm, Claim

CLAIMS = (
    Claim(name="lq-lora-recovers-quantization-error", variant="lq-lora",
          statement="LQ-LoRA's low-rank plus quantized decomposition of W0 starts from a smaller error than "
                    "quantizing W0 and adding a zero LoRA.",
          source="Guo et al. 2024, §3.1, Eq. 2", task="synthetic:fullrank", settings={"steps": 1, "lr": 1e-6},
          arms={"a": Arm("lq-lora", {})}, statistic="quant_error_recovered", direction="greater", threshold=0.0,
          note="share of ‖W0 − Q‖ the adapter corrects right after prepare() (one step at lr 1e-6)."),
)
