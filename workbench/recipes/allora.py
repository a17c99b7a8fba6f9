"""ALLoRA (Huang & Balestriero, 2024, "ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws",
arXiv:2410.09692): a per-row learning rate on the output side of the LoRA branch.

Row i of the gradient of the branch's output is rescaled by

    c_i = 1 / √(‖(BA)_{i,:}‖₂ + 1/η²)

(the row norm is not squared, as the paper prints it) *only* when ∇B and ∇A are formed; the gradient passed on to
the layer's input is LoRA's own. So c_i = η at BA = 0 (a fast escape from B = 0) and c_i shrinks as row i of the
update grows, in place of dropout and of the α/r scale, which the paper drops. With G the gradient of ΔW::

    ∇B = s · diag(c) G Aᵀ,    ∇A = s · Bᵀ diag(c) G

The branch is computed by one autograd function per layer (forward s·B A x, backward as above) installed on each
adapted layer for the run and removed when it ends; the factors c are recomputed from the current B, A before
every step (O((d_out + d_in)·r²) per layer) and recorded at probe steps as ``recipe``/``row_factor`` snapshots (one
vector per module: a row × step heatmap shows them shrinking as rows grow).

Parameterisation: the paper's ΔW = BA has no α/r scale; train ``lora`` with ``alpha = r`` (s = 1) for it. Dropout
must be 0 (a ConfigError otherwise): the paper replaces it. Not confirmed: the optimizer the paper pairs the rate
with (the official repository could not be fetched); ``optimizer="adamw"`` is the default, ``"sgd"`` is offered,
because under Adam a slowly varying per-row scale of ∇B largely cancels and only its effect inside ∇A remains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..options import param
from ..variant import VariantLayer
from .base import Recipe, RecipeConfig, register_recipe

PAPER = "Huang & Balestriero, 2024, ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws, arXiv:2410.09692"


@dataclass
class ALLoRAConfig(RecipeConfig):
    eta_squared: float = param(4.0, low=0.0, low_open=True, high=1e6,
                               help="η²: the factor at BA = 0 is η (paper: η² in {1, 2, 4})")
    optimizer: str = param("adamw", choices=("adamw", "sgd"), help="optimizer the rescaled gradients feed")


def row_factors(delta_rows_norm: torch.Tensor, eta_squared: float) -> torch.Tensor:
    """c_i = 1/√(‖ΔW_i‖ + 1/η²)."""
    return torch.rsqrt(delta_rows_norm + 1.0 / eta_squared)


def delta_row_norms(B: torch.Tensor, A: torch.Tensor, s: float) -> torch.Tensor:
    """‖(s·B A)_i‖ without forming BA: √(s² · b_iᵀ (A Aᵀ) b_i)."""
    q = ((B @ (A @ A.T)) * B).sum(dim=1).clamp_min(0)
    return abs(s) * q.sqrt()


class _ALLoRABranch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, A, B, s, c):
        h = x @ A.T
        ctx.save_for_backward(x, h, A, B, c)
        ctx.s = s
        return (h * s) @ B.T

    @staticmethod
    def backward(ctx, g):
        x, h, A, B, c = ctx.saved_tensors
        s = ctx.s
        gx = ((g @ B) * s) @ A if ctx.needs_input_grad[0] else None  # LoRA's own gradient to the input
        gc = g * c                                                   # rows of the output scaled by c_i
        g2, h2, x2 = gc.reshape(-1, gc.shape[-1]), h.reshape(-1, h.shape[-1]), x.reshape(-1, x.shape[-1])
        gB = s * g2.T @ h2 if ctx.needs_input_grad[2] else None
        gA = s * (g2 @ B).T @ x2 if ctx.needs_input_grad[1] else None
        return gx, gA, gB, None, None


@register_recipe("allora", paper=PAPER)
class ALLoRA(Recipe):
    summary = ("Give every output row of the update its own learning rate, 1/√(‖row of BA‖ + 1/η²): η while the "
               "row is zero (a fast start from B = 0) and smaller as the row grows, instead of dropout and the α/r "
               "scale. The gradient to the layer's input is untouched.")
    notes = ("Use lora with alpha = r (the paper has no α/r scale); dropout must be 0. The paper's optimizer is not "
             "confirmed (official repository not fetched): AdamW by default, SGD offered; under Adam the per-row "
             "scale of ∇B largely cancels.")
    needs_factors = True
    Config = ALLoRAConfig

    def build(self) -> torch.optim.Optimizer:
        self.factors: dict[str, torch.Tensor] = {}
        self.norms: dict[str, torch.Tensor] = {}
        self._patched = []
        for pair in self.pairs:
            layer = pair.layer
            if type(layer).forward is not VariantLayer.forward:
                raise ConfigError(f"allora: layer {pair.name}'s forward is not base(x) + delta_forward(x), so the "
                                  "per-row rate cannot be put on its branch")
            if getattr(layer.config, "dropout", 0) > 0:
                raise ConfigError(f"allora: dropout={layer.config.dropout} is invalid with ALLoRA; the paper replaces "
                                  "dropout by the per-row rate: set dropout=0")
            layer.delta_forward = self._branch(pair)
            self._patched.append(layer)
        self.refresh()
        params = [p for p in self.adaptation.parameters() if p.requires_grad]
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, foreach=True)

    def _branch(self, pair):
        def delta_forward(x):
            return _ALLoRABranch.apply(x, pair.A, pair.B, pair.scale, self.factors[pair.name].to(x.dtype))
        return delta_forward

    @torch.no_grad()
    def refresh(self) -> None:
        for pair in self.pairs:
            norms = delta_row_norms(pair.B, pair.A, pair.scale)
            self.norms[pair.name] = norms
            self.factors[pair.name] = row_factors(norms, self.config.eta_squared)

    def step(self, closure):
        self.refresh()
        loss = closure()
        self.optimizer.step()
        self._count()
        return loss

    def records(self):
        arrays, rows = {}, []
        for name, c in self.factors.items():
            arrays[(name, "row_factor")] = c.detach().clone()
            arrays[(name, "row_norm")] = self.norms[name].detach().clone()
            rows.append((name, "allora/row_factor_mean", float(c.mean())))
            rows.append((name, "allora/row_factor_min", float(c.min())))
        return rows, arrays

    def close(self) -> None:
        for layer in self._patched:
            layer.__dict__.pop("delta_forward", None)
        self._patched = []
