"""Claims of the modular papers (bottleneck adapters composed as in MAD-X), as data for the ledger
(:mod:`workbench.claims`)."""

from ...claims.claim import Arm, Claim

COMPOSITION = ("digits (workbench.transfer, as bench/composition.py): base ViT pretrained on upright digits 0-4; "
               "a domain update learned on rotated 0-4 (head frozen) and a task update on upright 0-9 (head "
               "trained), 150 steps each; ten-way accuracy on held-out rotated digits 5-9, which neither saw. b is, "
               "per seed, the better of the two updates alone (zero-shot transfer with one update); the paper's "
               "setting is cross-lingual retrieval with mBERT")

CLAIMS = (
    Claim(name="adapter-composition-beats-zero-shot-transfer", variant="adapter",
          statement="A task adapter stacked on a language (domain) adapter transfers to the target pair better than "
                    "zero-shot transfer with either update alone.",
          source="Litschko, Vulić & Glavaš, COLING 2022, §3-5, Tables 2-3", task="",
          arms={"a": Arm("adapter", {"models": ["domain + task (composed)"]}, label="adapter composed"),
                "b": Arm("adapter", {"models": ["domain alone", "task alone"]}, label="adapter best single update")},
          experiment="composition-transfer", experiment_options={"method": "adapter", "steps": 150},
          direction="greater",
          note=f"{COMPOSITION}. Adapters with reduction factor 2 after both blocks' MLPs (2·1,072 numbers), the task "
               f"adapter stacked on the domain one."),
)
