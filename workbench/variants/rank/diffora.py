"""DiffoRA: Enabling Parameter-Efficient Fine-Tuning via Differential Module Selection.

Jiang, Wang, Yuan, 2025, arXiv:2502.08905. LoRA is attached only to the modules chosen by a binary Differential
Adaptation Matrix Γ (layers × module types): ΔW_{l,m} = γ_{l,m}·s·B A. Γ is found by a continuous relaxation and
discretised, with weight sharing:

1. **relaxed search** (the first ``search_fraction`` of training): every candidate module has a LoRA and a gate
   γ = σ(a) with a trainable logit a; A, B and a train together (single-level, DARTS-style first order);
2. **discretise**: the top ``keep`` fraction of modules by γ get γ = 1, the others γ = 0 (their A, B and a freeze);
3. **weight sharing**: the selected modules keep the LoRA weights learned during the search and train on.

``inspect()`` reports ``rank`` = r for every module while searching (each one contributes γ·s·BA) and r·decision
after discretisation; γ itself is the ``gates`` view.

Not confirmed (the paper's details were not recovered here): the keep ratio, the search length, whether the search
is bilevel (logits on held-out batches) and the gate parameterisation; all are config fields or our choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...variant import Variant, param, register
from ..lowrank.lora import LoRAConfig, LoRALayer

PAPER = ("Jiang, Wang, Yuan, 2025, DiffoRA: Enabling Parameter-Efficient Fine-Tuning via Differential Module "
         "Selection, arXiv:2502.08905")


@dataclass
class DiffoRAConfig(LoRAConfig):
    keep: float = param(0.5, low=0.0, high=1.0, low_open=True, help="fraction of modules kept after the search")
    search_fraction: float = param(0.3, low=0.0, high=1.0, low_open=True, help="fraction of training spent searching")


class DiffoRALayer(LoRALayer):
    def __init__(self, base: nn.Linear, config: DiffoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        self.logit = nn.Parameter(torch.zeros((), device=base.weight.device, dtype=base.weight.dtype))
        self.register_buffer("decision", torch.tensor(-1.0))  # -1: searching; 0 / 1: dropped / selected

    def gamma(self) -> torch.Tensor:
        return torch.sigmoid(self.logit) if self.decision < 0 else self.decision.to(self.logit.dtype)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().delta_forward(x) * self.gamma()

    def factors(self):
        b, a = super().factors()
        return b * self.gamma(), a

    def inspect(self):
        """``gates``: γ (σ(a) while searching, the 0/1 decision after); ``rank``: the rank the module's update
        actually has, r while searching (every module contributes γ·s·BA, γ = σ(0) = 0.5 at the start) and
        r·decision after discretisation."""
        rank = self.config.r if self.decision < 0 else self.config.r * float(self.decision)
        return {**super().inspect(), "gates": self.gamma().detach().reshape(1).clone(),
                "rank": torch.tensor(float(rank))}


@register("diffora", family="rank", paper=PAPER)
class DiffoRA(Variant):
    summary = ("Decide which modules deserve a LoRA at all. Every candidate starts with one, behind a soft gate; "
               "after a short search the best-gated modules keep their LoRA (with the weights learned so far) and "
               "the others lose it.")
    formula = (r"$\Delta W_{l,m} = \gamma_{l,m}\,\frac{\alpha}{r} B A,\quad \gamma = \sigma(a)\ \text{(search)} \to"
               r" \{0, 1\}$")
    Config = DiffoRAConfig
    Layer = DiffoRALayer
    dynamic = True
    example_config = {"r": 4, "keep": 0.5}
    notes = ("Single-level search; keep ratio and search length are config fields (paper details not recovered). "
             "The rank view is r while searching and r·decision after; γ is the gate view.")

    def on_step(self, ctx):
        adaptation, step, total = ctx.adaptation, ctx.step, ctx.total_steps
        if step + 1 != max(1, round(self.config.search_fraction * total)):
            return
        layers = [layer for _, layer in adaptation.named_layers()]
        n_keep = max(1, round(self.config.keep * len(layers)))
        order = sorted(range(len(layers)), key=lambda i: float(layers[i].logit.detach()), reverse=True)
        with torch.no_grad():
            for rank, i in enumerate(order):
                layer = layers[i]
                keep = rank < n_keep
                layer.decision.fill_(1.0 if keep else 0.0)
                layer.logit.requires_grad_(False)
                if not keep:
                    for p in (layer.lora_A, layer.lora_B):
                        p.requires_grad_(False)
                        p.grad = None
