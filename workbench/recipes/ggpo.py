"""LoRA-GGPO (v1) and LoRA-MGPO (v2) (Chang, Guo, Chang & Wu, "LoRA-GGPO / LoRA-MGPO: Mitigating Double Descent in
Low-Rank Adaptation", arXiv:2502.14538, EMNLP Findings 2025): perturb training to keep LoRA away from sharp minima,
with no second gradient computation (SAM needs two).

``lora-ggpo`` (v1, gradient-guided perturbation). During training only, every adapted layer's output gains ε x,
ε_ij ~ N(0, σ_i²) drawn anew at every forward, with no gradient through it and nothing at evaluation::

    σ_i = (σ · ‖W′_i‖ + β · ‖Ĝ_i‖²) / √d_out,   ‖W′_i‖ = √(mean_i ‖W0_i‖² + ‖(s·BA)_i‖²),
    Ĝ = s(B ∇A + ∇B A)  (the LoRA-space approximation of the full gradient, from the previous step)

Source [3rd]: kohya-ss sd-scripts' ``ggpo_sigma`` / ``ggpo_beta`` (networks/lora_flux.py), the implementation the
notes point to; the paper's v1 formula itself was not confirmed. The weight-norm term uses the mean squared row norm
of W0 (sd-scripts estimates it from up to 1,000 sampled rows; here every row). No perturbation before the first
gradient exists.

``lora-mgpo`` (v2, momentum-guided perturbation). The LoRA parameters θ are moved to θ̃ = θ + ε along AdamW's first
moment m (β₁ = μ), the gradient is computed at θ̃ (one forward/backward) and applied to θ::

    ε = ρ · m_{t−1} / ḡ_{t−1},     ḡ_t = β ḡ_{t−1} + (1 − β) ‖∇_θ̃ L‖₂  (a global norm over the LoRA gradients)

Not confirmed: the exact normalisation. The notes transcribe it as ρ·m/‖m‖·1/ḡ, which is not a length in
parameter space; ``normalization="ema"`` (the default) divides the momentum by the EMA of gradient norms (ρ·m/ḡ, so
‖ε‖ ≈ ρ when gradients agree and less when they are noisy: the "adaptive perturbation normalization" of the
abstract), ``"literal"`` is the transcription. The perturbation is skipped while m = 0 (the first step). Settings:
NLU ρ = 0.05, μ = β = 0.9; NLG ρ = 0.01, μ = β = 0.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..options import param
from .base import Recipe, RecipeConfig, register_recipe

PAPER = ("Chang et al., 2025, LoRA-MGPO: Mitigating Double Descent in Low-Rank Adaptation via Momentum-Guided "
         "Perturbation Optimization (v1: LoRA-GGPO), EMNLP Findings 2025, arXiv:2502.14538")


@dataclass
class GGPOConfig(RecipeConfig):
    sigma: float = param(0.03, low=0.0, high=10.0, help="σ: weight-norm term of the noise scale (example: 0.03)")
    beta: float = param(0.01, low=0.0, high=10.0, help="β: gradient-norm term of the noise scale (example: 0.01)")


@dataclass
class MGPOConfig(RecipeConfig):
    rho: float = param(0.05, low=0.0, high=10.0, help="ρ: perturbation radius (paper: 0.05 NLU, 0.01 NLG)")
    mu: float = param(0.9, low=0.0, high=0.999, help="μ: AdamW's β₁, whose first moment guides ε (paper: 0.9 / 0.8)")
    beta: float = param(0.9, low=0.0, high=0.999, help="β: EMA decay of the gradient norm ḡ (paper: 0.9 / 0.8)")
    normalization: str = param("ema", choices=("ema", "literal"),
                               help="ema: ε = ρ·m/ḡ; literal: ε = ρ·m/(‖m‖·ḡ) (see the notes)")


@register_recipe("lora-ggpo", paper=PAPER)
class LoRAGGPO(Recipe):
    summary = ("Add random noise ε x to every adapted layer while training (never at evaluation), scaled per output "
               "row by that row's weight norm and squared gradient norm: training is pushed to regions where noise "
               "does not hurt, i.e. flat minima, at the price of one extra dense product per layer per forward.")
    notes = ("v1 after kohya sd-scripts' ggpo_sigma/ggpo_beta [3rd]; the paper's own formula was not confirmed. "
             "Mean squared W0 row norm over all rows (sd-scripts samples 1,000).")
    needs_factors = True
    Config = GGPOConfig

    def build(self) -> torch.optim.Optimizer:
        self.row_scale: dict[str, torch.Tensor] = {}
        self.grad_rows: dict[str, torch.Tensor] = {}
        self.hooks = []
        with torch.no_grad():
            self.w0_sq = {p.name: float(p.layer.base.weight.float().pow(2).sum(dim=1).mean()) for p in self.pairs}
        for pair in self.pairs:
            self.hooks.append(pair.layer.register_forward_hook(self._hook(pair)))
        groups = self.adaptation.variant.param_groups(self.adaptation, self.lr, self.weight_decay)
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, foreach=True)

    def _hook(self, pair):
        def fn(module, args, out):
            scale = self.row_scale.get(pair.name)
            if not module.training or scale is None or getattr(module, "merged", False):
                return None
            with torch.no_grad():
                w = module.base.weight
                eps = torch.randn(w.shape, device=w.device, dtype=w.dtype) * scale[:, None].to(w.dtype)
                noise = torch.nn.functional.linear(args[0], eps)
            return out + noise
        return fn

    @torch.no_grad()
    def _scales(self) -> None:
        """σ_i from the current weights and the previous step's gradient (none before the first gradient)."""
        for pair in self.pairs:
            g = self.grad_rows.get(pair.name)
            if g is None:
                continue
            B, A, s = pair.B, pair.A, pair.scale
            lora_rows = s * s * ((B @ (A @ A.T)) * B).sum(dim=1).clamp_min(0)
            w_norm = torch.sqrt(self.w0_sq[pair.name] + lora_rows)
            self.row_scale[pair.name] = (self.config.sigma * w_norm + self.config.beta * g) / math.sqrt(B.shape[0])

    @torch.no_grad()
    def _grad_rows(self) -> None:
        """‖Ĝ_i‖² with Ĝ = s(B ∇A + ∇B A), per output row."""
        for pair in self.pairs:
            B, A, s = pair.B, pair.A, pair.scale
            if A.grad is None or B.grad is None:
                continue
            g_hat = s * (B @ A.grad + B.grad @ A)
            self.grad_rows[pair.name] = g_hat.pow(2).sum(dim=1)

    def step(self, closure):
        self._scales()
        loss = closure()
        self._grad_rows()
        self.optimizer.step()
        self._count()
        return loss

    def records(self):
        rows, arrays = [], {}
        for name, scale in self.row_scale.items():
            rows.append((name, "ggpo/sigma_mean", float(scale.mean())))
            arrays[(name, "sigma")] = scale.detach().clone()
        return rows, arrays

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
        self.row_scale = {}


@register_recipe("lora-mgpo", paper=PAPER)
class LoRAMGPO(Recipe):
    summary = ("Take each step's gradient at the LoRA weights moved a little along the optimizer's momentum (a "
               "SAM-like look-ahead that needs no second backward), scaled by a moving average of gradient norms, "
               "and apply it at the unmoved weights: flatter minima at the cost of one forward/backward.")
    notes = ("ε's normalisation not confirmed (default ρ·m/ḡ; 'literal' is ρ·m/(‖m‖·ḡ)); skipped while m = 0. Only "
             "the factor tensors (B, A) are perturbed; heads trained in full are not.")
    needs_factors = True
    Config = MGPOConfig

    def build(self) -> torch.optim.Optimizer:
        self.lora = [t for p in self.pairs for t in (p.B, p.A)]
        self.gbar: torch.Tensor | None = None   # EMA of the global LoRA gradient norm, on the device
        self.eps_norm: torch.Tensor | float = 0.0
        groups = self.adaptation.variant.param_groups(self.adaptation, self.lr, self.weight_decay)
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, betas=(self.config.mu, 0.999),
                                 foreach=True)

    def step(self, closure):
        """Perturb along the momentum, take the gradient there, restore, step. No host sync: ḡ and ‖ε‖ stay on the
        device (read only at probe steps by :meth:`records`)."""
        moments = [self.optimizer.state.get(p, {}).get("exp_avg") for p in self.lora]
        eps = None
        if self.gbar is not None and all(m is not None for m in moments):  # m = 0 before the first step: skip
            with torch.no_grad():
                denom = self.gbar
                if self.config.normalization == "literal":
                    denom = denom * torch.sqrt(sum(m.float().pow(2).sum() for m in moments))
                denom = denom.clamp_min(1e-12)
                eps = [(self.config.rho * m / denom).to(m.dtype) for m in moments]
                self.eps_norm = torch.sqrt(sum(e.float().pow(2).sum() for e in eps))
                for p, e in zip(self.lora, eps):
                    p.add_(e)
        try:
            loss = closure()
        finally:
            if eps is not None:
                with torch.no_grad():
                    for p, e in zip(self.lora, eps):
                        p.sub_(e)
        with torch.no_grad():
            grads = [p.grad for p in self.lora if p.grad is not None]
            if grads:
                norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads))
                if self.gbar is None:
                    self.gbar = norm
                else:  # a non-finite gradient (a diverging step) leaves ḡ as it was
                    new = self.config.beta * self.gbar + (1 - self.config.beta) * norm
                    self.gbar = torch.where(torch.isfinite(new), new, self.gbar)
        self.optimizer.step()
        self._count()
        return loss

    def records(self):
        gbar = 0.0 if self.gbar is None else float(self.gbar)
        return [("", "mgpo/eps_norm", float(self.eps_norm)), ("", "mgpo/gbar", gbar)], {}
