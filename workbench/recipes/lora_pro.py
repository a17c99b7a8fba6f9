"""LoRA-Pro (Wang, Liang, Zhang & Tan, ICLR 2025, "LoRA-Pro: Are Low-Rank Adapters Properly Optimized?",
arXiv:2407.18242): make LoRA's step follow the full fine-tuning step.

A LoRA step moves ΔW = s·B A by the *equivalent gradient* g̃ = s(B·g^A + g^B·A). LoRA-Pro chooses (g^A, g^B) so
that g̃ is the least-squares fit of the full gradient G = ∂L/∂W (the paper's Theorem 2.1), from the LoRA gradients
∇A = s·BᵀG and ∇B = s·G Aᵀ alone::

    g^A = (1/s²)(BᵀB)⁻¹ ∇A + X A
    g^B = (1/s²)[I − B(BᵀB)⁻¹Bᵀ] ∇B (AAᵀ)⁻¹ − B X

Any X gives the same g̃; X is the solution of the Sylvester equation (Theorem 2.2, the X that keeps (g^A, g^B)
closest to LoRA's own gradients)::

    BᵀB X + X AAᵀ = −(1/s²)(BᵀB)⁻¹ ∇A Aᵀ

With Adam (the paper's §2.3, the official code's ``lorapro_full_adjustment``): the first and second moments are
kept for the **full-size** equivalent gradient (d_out × d_in per layer: LoRA-Pro's memory cost), the Adam
direction U is mapped back to LoRA gradients ∇A := s·BᵀU, ∇B := s·U Aᵀ, adjusted again (with X), and a plain SGD
step is taken with them.

Numerics as the official code: inverses are pseudo-inverses of BᵀB + δI and AAᵀ + δI with δ = 1e-8; X is solved in
float64 in the eigenbases of the two symmetric matrices (exact for symmetric positive semi-definite coefficients; the
official code uses a general eigen-decomposition). The official DeepSpeed code hard-codes s = 2; here s is the
layer's own scale. Weight decay (the loop's ``weight_decay``) is decoupled, p ← p(1 − lr·wd).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import param
from .base import AdamWithOthers, Recipe, RecipeConfig, other_parameters, register_recipe

PAPER = "Wang et al., 2025, LoRA-Pro: Are Low-Rank Adapters Properly Optimized?, ICLR 2025, arXiv:2407.18242"


@dataclass
class LoRAProConfig(RecipeConfig):
    beta1: float = param(0.9, low=0.0, high=0.999, help="Adam's first-moment decay (official code: 0.9)")
    beta2: float = param(0.999, low=0.0, high=0.99999, help="Adam's second-moment decay (official code: 0.999)")
    eps: float = param(1e-8, low=0.0, low_open=True, high=1.0, help="Adam's epsilon (official code: 1e-8)")
    delta: float = param(1e-8, low=0.0, low_open=True, high=1.0,
                         help="ridge δ in the pseudo-inverses of BᵀB + δI and AAᵀ + δI (official code: 1e-8)")


def solve_sylvester_sym(p: torch.Tensor, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """X with P X + X Q = C for symmetric P (r×r) and Q (r×r), in float64 through P = UΛUᵀ, Q = VMVᵀ:
    X = U [(UᵀCV)_ij / (λ_i + μ_j)] Vᵀ."""
    p64, q64, c64 = p.double(), q.double(), c.double()
    lam, u = torch.linalg.eigh(0.5 * (p64 + p64.T))
    mu, v = torch.linalg.eigh(0.5 * (q64 + q64.T))
    denom = lam[:, None] + mu[None, :]
    denom = torch.where(denom.abs() < 1e-300, torch.full_like(denom, 1e-300), denom)
    return (u @ ((u.T @ c64 @ v) / denom) @ v.T).to(c.dtype)


def adjusted_gradients(B: torch.Tensor, A: torch.Tensor, grad_A: torch.Tensor, grad_B: torch.Tensor, s: float,
                       delta: float = 1e-8, with_x: bool = True):
    """LoRA-Pro's (g^A, g^B, X) from LoRA's gradients (∇A, ∇B) for ΔW = s·B A (module docstring)."""
    r = A.shape[0]
    eye = torch.eye(r, device=A.device, dtype=A.dtype)
    btb, aat = B.T @ B, A @ A.T
    btb_inv = torch.linalg.pinv(btb + delta * eye)
    aat_inv = torch.linalg.pinv(aat + delta * eye)
    g_a = btb_inv @ grad_A / s ** 2
    # [I − B(BᵀB)⁻¹Bᵀ] ∇B without forming the out × out projector
    g_b = (grad_B - B @ (btb_inv @ (B.T @ grad_B))) @ aat_inv / s ** 2
    x = torch.zeros(r, r, device=A.device, dtype=A.dtype)
    if with_x:
        x = solve_sylvester_sym(btb, aat, -(btb_inv @ grad_A @ A.T) / s ** 2)
        g_a = g_a + x @ A
        g_b = g_b - B @ x
    return g_a, g_b, x


class LoRAProOptimizer(torch.optim.Optimizer):
    """The equivalent-gradient Adam of LoRA-Pro for every factor pair; other tensors take AdamW."""

    def __init__(self, pairs, others, lr: float, weight_decay: float, cfg: LoRAProConfig):
        self.pairs, self.cfg = pairs, cfg
        self.others = AdamWithOthers(others, lr, weight_decay)
        groups = [{"params": [t for p in pairs for t in (p.B, p.A)], "lr": lr, "weight_decay": weight_decay}]
        super().__init__(groups + ([self.others.group] if others else []), {"lr": lr, "weight_decay": weight_decay})
        self.t = 0
        self.last: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        lr, wd, cfg = group["lr"], group["weight_decay"], self.cfg
        self.t += 1
        bc1, bc2 = 1 - cfg.beta1 ** self.t, 1 - cfg.beta2 ** self.t
        for pair in self.pairs:
            B, A, s = pair.B, pair.A, pair.scale
            gA = A.grad if A.grad is not None else torch.zeros_like(A)
            gB = B.grad if B.grad is not None else torch.zeros_like(B)
            g_a, g_b, _ = adjusted_gradients(B, A, gA, gB, s, cfg.delta, with_x=False)
            equiv = s * (B @ g_a + g_b @ A)
            state = self.state[pair.A]
            if "exp_avg" not in state:  # full d_out × d_in moments: LoRA-Pro's memory cost
                state["exp_avg"] = torch.zeros_like(equiv)
                state["exp_avg_sq"] = torch.zeros_like(equiv)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(equiv, 1 - cfg.beta1)
            v.mul_(cfg.beta2).addcmul_(equiv, equiv, value=1 - cfg.beta2)
            u = (m / bc1) / ((v / bc2).sqrt() + cfg.eps)
            g_a, g_b, x = adjusted_gradients(B, A, s * B.T @ u, s * u @ A.T, s, cfg.delta, with_x=self.t > 1)
            if wd:
                A.mul_(1 - lr * wd)
                B.mul_(1 - lr * wd)
            A.sub_(lr * g_a)
            B.sub_(lr * g_b)
            self.last[pair.name] = x  # ‖X‖ is read at probe steps (records), not synced here
        self.others.step()


@register_recipe("lora-pro", paper=PAPER)
class LoRAPro(Recipe):
    summary = ("Adjust LoRA's two gradients so that the step they make in ΔW = s·B A is the least-squares fit of "
               "the full fine-tuning gradient, and run Adam on that equivalent gradient (full-size moments), mapped "
               "back to B and A: LoRA optimised as if it were full fine-tuning restricted to a low-rank step.")
    notes = ("Adam moments are d_out × d_in per layer (2·d_out·d_in floats: the memory of full fine-tuning's Adam "
             "state). X is solved in float64 in the eigenbases of BᵀB and AAᵀ (the official code: a general "
             "eigen-decomposition); X = 0 at the first step as in the official code; s is the layer's own scale "
             "(the official DeepSpeed code hard-codes s = 2).")
    needs_factors = True
    Config = LoRAProConfig

    def build(self) -> torch.optim.Optimizer:
        return LoRAProOptimizer(self.pairs, other_parameters(self.adaptation, self.pairs), self.lr,
                                self.weight_decay, self.config)

    def records(self):
        rows = [(m, "lora_pro/x_norm", float(torch.linalg.matrix_norm(x))) for m, x in self.optimizer.last.items()]
        state_floats = sum(t.numel() for st in self.optimizer.state.values() for t in st.values()
                           if isinstance(t, torch.Tensor))
        rows.append(("", "lora_pro/state_floats", float(state_floats)))
        return rows, {}
