"""Claims of the modular papers (bottleneck adapters composed as in MAD-X), as data for the ledger
(:mod:`workbench.claims`)."""

from ...claims.experiments import composition_claim

CLAIMS = (
    composition_claim("adapter", statement="A task adapter stacked on a language (domain) adapter transfers to the "
                                           "target pair better than zero-shot transfer with either update alone.",
                      how="Adapters with reduction factor 2 after both blocks' MLPs (2·1,072 numbers), the task "
                          "adapter stacked on the domain one."),
)
