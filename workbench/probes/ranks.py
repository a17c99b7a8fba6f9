"""Allocation: per-module active rank, gates and trainable parameters, and the total rank budget.

Reads each layer's ``inspect()``; variants that allocate (SoRA's gates, AdaLoRA's masks, IncreLoRA's growth)
report ``rank`` and ``gates`` there, so the allocation heatmap needs no variant-specific code; Bayesian-LoRA's
quantization gates add ``bits_A``/``bits_B`` (the learned bits of each matrix) and ``bops``, drawn beside the ranks by
:func:`workbench.figures.bit_allocation`. Layers that report
no ``rank`` show the numerical rank of ΔW.
"""

from __future__ import annotations

import torch

from .base import Probe, ProbeContext, ProbeResult
from .spectra import numerical_rank, singular_values


class RanksProbe(Probe):
    name = "ranks"

    def after_step(self, ctx: ProbeContext) -> ProbeResult:
        out = ProbeResult()
        budget = 0.0
        for module, layer in ctx.adaptation.named_layers():
            views = layer.inspect()
            if "rank" in views:
                rank = float(views["rank"])
            elif layer.has_weight:
                rank = float(numerical_rank(singular_values(layer)))
            else:
                continue
            budget += rank
            out.add(module, "rank", rank)
            out.add(module, "params", sum(p.numel() for p in layer.parameters() if p.requires_grad))
            for name in ("bits_A", "bits_B", "bops"):  # Bayesian-LoRA's learned bits per matrix, beside the ranks
                if name in views:
                    out.add(module, name, float(views[name]))
            for name in ("gates", "mask", "lr_scale", "bit_gates"):
                if name in views:
                    out.arrays[(module, name)] = torch.as_tensor(views[name]).detach().float().cpu().flatten()
        out.add("", "budget", budget)
        return out
