"""AltLoRA and AltLoRA+ (Yu et al., 2025, "AltLoRA: Towards Better Gradient Approximation in Low-Rank Adaptation
with Alternating Projections", arXiv:2505.12455; official code github.com/LucasXinYu/AltLoRA, ``optimizer_new.py``
and ``logtrainer.py``).

Instead of LoRA-Pro's joint fit, each factor is updated alone with the gradient projected by the *other* factor's
Gram matrix (the scaled gradient descent that makes the step the best fit of the full gradient with that factor
fixed), and the momentum, kept in r-dimensional factor space, is re-projected when the other factor has moved
(Alg. 1)::

    A step:  ∇̃A = (1/s²)(BᵀB + λI)⁻¹ ∇A,      M_A ← β₁ (BᵀB + λI)⁻¹ Bᵀ B_prev · M_A + (1 − β₁) ∇̃A
             A ← A − η (M_A / (1 − β₁ᵗ) + γ A)
    B step:  ∇̃B = (1/s²) ∇B (AAᵀ + λI)⁻¹,      M_B ← β₁ M_B · A_prev Aᵀ (AAᵀ + λI)⁻¹ + (1 − β₁) ∇̃B
             B ← B − η (M_B / (1 − β₁ᵗ) + γ B)

(B_prev, A_prev: the other factor when its momentum was last updated; γ is the loop's weight decay, decoupled.)
AltLoRA+ (Alg. 2) divides the (re-projected) momentum by √v + ε with v an Adam second moment of ∇̃.

``mode="a-then-b"`` is the official code's default: from one backward pass, A steps first, then B steps with the
new A in its projection (its gradient is the one computed at the old A). ``mode="alternate"`` is Alg. 1's
alternation (and the official ``alt`` option, which switches every ``period`` = 10 steps): phases of ``period``
steps update only A, then only B. The ridge λ (official: 1e-5) keeps every step finite at B = 0, where
∇A = s·BᵀG = 0 as well. The official code folds 1/s² into the rate (``paper_scaling=False``, the default); set it
to true for Alg. 1's 1/s².

Not confirmed: AltLoRA+ here stores the re-projected momentum (as Alg. 1 does); the official ``altlora_plus``
steps with the re-projected momentum but stores the un-projected one. Bias correction of the first moment follows
the official ``correct_bias=True``; the second moment is not bias-corrected there, nor here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import param
from .base import AdamWithOthers, Recipe, RecipeConfig, other_parameters, register_recipe

PAPER = ("Yu et al., 2025, AltLoRA: Towards Better Gradient Approximation in Low-Rank Adaptation with Alternating "
         "Projections, arXiv:2505.12455")


@dataclass
class AltLoRAConfig(RecipeConfig):
    mode: str = param("a-then-b", choices=("a-then-b", "alternate"),
                      help="a-then-b: A then B from one backward (official default); alternate: phases of A or B only")
    period: int = param(1, low=1, high=100_000, help="steps per phase in mode=alternate (official strict option: 10)")
    beta1: float = param(0.9, low=0.0, high=0.999, help="momentum decay β₁ (official: 0.9)")
    reg: float = param(1e-5, low=0.0, low_open=True, high=1.0, help="ridge λ in (BᵀB + λI)⁻¹, (AAᵀ + λI)⁻¹")
    paper_scaling: bool = param(False, help="multiply the projected gradients by 1/s² as Alg. 1 (official: folded "
                                            "into the learning rate)")


@dataclass
class AltLoRAPlusConfig(AltLoRAConfig):
    beta2: float = param(0.999, low=0.0, high=0.99999, help="second-moment decay β₂ (official: 0.999)")
    eps: float = param(1e-4, low=0.0, low_open=True, high=1.0, help="ε added to √v (official: 1e-4)")


class AltLoRAOptimizer(torch.optim.Optimizer):
    """Alg. 1 (and Alg. 2 with ``second_moment``) for every factor pair; other tensors take AdamW."""

    def __init__(self, pairs, others, lr: float, weight_decay: float, cfg, second_moment: bool, step_of):
        self.pairs, self.cfg, self.second_moment, self.step_of = pairs, cfg, second_moment, step_of
        self.others = AdamWithOthers(others, lr, weight_decay)
        groups = [{"params": [t for p in pairs for t in (p.B, p.A)], "lr": lr, "weight_decay": weight_decay}]
        super().__init__(groups + ([self.others.group] if others else []), {"lr": lr, "weight_decay": weight_decay})

    def _update(self, p: torch.Tensor, grad: torch.Tensor, precond: torch.Tensor, reproject: torch.Tensor,
                left: bool, other_now: torch.Tensor, lr: float, wd: float) -> None:
        cfg, st = self.cfg, self.state[p]
        if "exp_avg" not in st:
            st["exp_avg"], st["t"], st["other_prev"] = torch.zeros_like(p), 0, torch.zeros_like(other_now)
            if self.second_moment:
                st["exp_avg_sq"] = torch.zeros_like(p)
        st["t"] += 1
        g = precond @ grad if left else grad @ precond
        m = st["exp_avg"]
        m = reproject @ m if left else m @ reproject
        m = cfg.beta1 * m + (1 - cfg.beta1) * g
        st["exp_avg"] = m
        step = m / (1 - cfg.beta1 ** st["t"])
        if self.second_moment:
            v = st["exp_avg_sq"].mul_(cfg.beta2).addcmul_(g, g, value=1 - cfg.beta2)
            step = step / (v.sqrt() + cfg.eps)
        p.sub_(lr * step)
        if wd:
            p.mul_(1 - lr * wd)
        st["other_prev"] = other_now.detach().clone()

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        lr, wd, cfg = group["lr"], group["weight_decay"], self.cfg
        phase = (self.step_of() // cfg.period) % 2  # alternate: 0 updates A, 1 updates B
        for pair in self.pairs:
            B, A, s = pair.B, pair.A, pair.scale
            k = 1.0 / s ** 2 if cfg.paper_scaling else 1.0
            eye = torch.eye(A.shape[0], device=A.device, dtype=A.dtype)
            if (cfg.mode == "a-then-b" or phase == 0) and A.grad is not None:
                b_inv = torch.linalg.inv(B.T @ B + cfg.reg * eye)
                b_prev = self.state[A].get("other_prev", torch.zeros_like(B))
                self._update(A, k * A.grad, b_inv, b_inv @ B.T @ b_prev, True, B, lr, wd)
            if (cfg.mode == "a-then-b" or phase == 1) and B.grad is not None:
                a_inv = torch.linalg.inv(A @ A.T + cfg.reg * eye)  # with the new A in a-then-b mode
                a_prev = self.state[B].get("other_prev", torch.zeros_like(A))
                self._update(B, k * B.grad, a_inv, a_prev @ A.T @ a_inv, False, A, lr, wd)
        self.others.step()


class _AltBase(Recipe):
    needs_factors = True
    second_moment = False

    def build(self) -> torch.optim.Optimizer:
        return AltLoRAOptimizer(self.pairs, other_parameters(self.adaptation, self.pairs), self.lr,
                                self.weight_decay, self.config, self.second_moment, lambda: self.step_index)

    def records(self):
        rows = []
        for pair in self.pairs:  # read at probe steps only: no host sync in the step itself
            for side, t in (("A", pair.A), ("B", pair.B)):
                m = self.optimizer.state[t].get("exp_avg")
                rows.append((pair.name, f"altlora/momentum_norm_{side}", 0.0 if m is None else float(m.norm())))
            with torch.no_grad():
                rows.append((pair.name, "altlora/cond_BtB", float(torch.linalg.cond(pair.B.T @ pair.B))))
                rows.append((pair.name, "altlora/cond_AAt", float(torch.linalg.cond(pair.A @ pair.A.T))))
        return rows, {}


@register_recipe("altlora", paper=PAPER)
class AltLoRA(_AltBase):
    summary = ("Update A and B in turn, each with its gradient projected by the other factor's Gram matrix (the "
               "best fit of the full gradient with the other factor fixed), and keep momentum in the r-dimensional "
               "factor space, re-projected when the other factor moves: LoRA-Pro's aim at LoRA's memory.")
    notes = ("Default mode is the official code's A-then-B from one backward; mode='alternate' is Alg. 1's "
             "alternation (period=10: the official strict option). 1/s² folded into the rate unless paper_scaling.")
    Config = AltLoRAConfig


@register_recipe("altlora+", paper=PAPER)
class AltLoRAPlus(_AltBase):
    summary = ("AltLoRA with an Adam-style second moment of the projected gradients (Alg. 2): the re-projected "
               "momentum is divided by √v + ε.")
    notes = ("Stores the re-projected momentum (the official altlora_plus stores the un-projected one); no bias "
             "correction of v, as in the official code.")
    Config = AltLoRAPlusConfig
    second_moment = True
