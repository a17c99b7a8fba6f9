"""LoRA-Squeeze: train LoRA at a generous rank, then compress it to the rank you deploy.

Vulić et al., 2026, "LoRA-Squeeze", arXiv:2602.10993. A plain LoRA is trained at a source rank r_src
(ΔW = (α/r_src)·B A); its ΔW is then re-factorised by a truncated SVD to the target rank r_tgt (Post-Squeeze), and
optionally trained a little longer at r_tgt with a fresh optimizer state (Cont-Squeeze). In-Squeeze anneals the
rank during training: it squeezes to smaller intermediate ranks at evenly spaced steps until r_tgt.

``squeeze(layer, k)`` takes the SVD of ΔW by a randomised SVD of the dense ΔW (``svd="randomized"``, the paper's
RSVD; ``torch.svd_lowrank`` with q = r, which spans the range of the rank-r ΔW, so its top-k is exact up to
rounding) or without building ΔW (``svd="factored"``): with B = Q_B R_B and Aᵀ = Q_A R_A, ΔW = Q_B (s R_B R_Aᵀ) Q_Aᵀ,
so the SVD of the small r×r core gives ΔW's (the paper's memory-efficient variant). The kept part
is split symmetrically, B′ = U_k Σ_k^{1/2}/√s′ and A′ = Σ_k^{1/2} V_kᵀ/√s′, so that s′B′A′ is the best rank-k
approximation of ΔW (Eckart–Young).

The scale after a squeeze (not stated in what we could read of the paper) is ours: by default s′ = s = α/r_src
(``rescale="keep"``). Adam moves each entry of B, A by about the learning rate, so a change of ΔW is proportional
to s; LoRA's usual s′ = α/r_tgt (``rescale="alpha"``) multiplies the continued training's effective step by
r_src/r_tgt. On synthetic:fullrank (3 seeds, lr 1e-2, ``bench/lora_squeeze.py``) that jump costs: rank 16→4 at 80%
of 600 steps ends at rel_error 0.0468 with ``alpha`` against 0.0429 with ``keep`` (LoRA r=4 directly: 0.0427); at
150 steps ``keep`` beats the direct rank 4 (0.0440 against 0.0453) and ``alpha`` does not (0.0482).

Modes: ``post`` squeezes once at ``squeeze_at``·T and trains on at r_tgt (Cont-Squeeze; ``squeeze_at=1`` is pure
Post-Squeeze); ``in`` halves the rank (never below r_tgt) at ``n_squeezes`` evenly spaced steps over the first
``squeeze_at``·T steps. Not confirmed against the paper: its exact Σ split, α handling and In-Squeeze schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ... import rng
from ...variant import ConfigError, Variant, VariantConfig, param, register
from ..lowrank.lora import LoRALayer
from .gated import replace_parameter

PAPER = ("Vulić et al., 2026, LoRA-Squeeze: Simple and Effective Post-Tuning and In-Tuning Compression of LoRA"
         " Modules, arXiv:2602.10993")


@dataclass
class LoRASqueezeConfig(VariantConfig):
    r: int = param(16, low=1, high=min, help="source rank r_src trained first")
    target_r: int = param(4, low=1, high=min, help="deployment rank r_tgt")
    alpha: float = param(16.0, low=0, low_open=True, help="scale numerator: s = alpha / current rank")
    mode: str = param("post", choices=("post", "in", "none"),
                      help="post: squeeze once then continue; in: anneal the rank while training; none: by hand")
    squeeze_at: float = param(0.8, low=0.0, high=1.0, low_open=True,
                              help="post: fraction of training at r_src; in: fraction over which ranks anneal")
    n_squeezes: int = param(2, low=1, high=16, help="in: number of intermediate squeezes")
    dropout: float = param(0.0, low=0.0, high=0.99, help="dropout on the adapter's input (training only)")
    init: str = param("default", choices=("default", "gaussian"), help="A's init, as LoRA")
    svd: str = param("randomized", choices=("randomized", "factored"),
                     help="randomized: RSVD of the dense ΔW (the paper); factored: exact, through QR of B and A")
    rescale: str = param("keep", choices=("keep", "alpha"),
                         help="scale after a squeeze: keep α/r_src, or LoRA's α/(current rank)")

    def check(self, shapes):
        if self.target_r > self.r:
            raise ConfigError(f"lora-squeeze: target_r={self.target_r} is invalid; target_r must be an integer in "
                              f"[1, r={self.r}]")


class LoRASqueezeLayer(LoRALayer):
    """A LoRA layer whose rank can be squeezed; its scale stays α/r_src or follows the current rank (``rescale``)."""

    @property
    def scaling(self) -> float:
        return self.config.alpha / (self.config.r if self.config.rescale == "keep" else self.lora_A.shape[0])

    def _svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """U, σ, V of ΔW = s·B A (all r components): a randomised SVD of the dense ΔW (the paper's RSVD, with
        q = r it spans ΔW's range exactly), or the same through QR of the factors without building ΔW."""
        s, r = self.scaling, self.lora_A.shape[0]
        if self.config.svd == "randomized":
            # torch.svd_lowrank on a stream of its own (seed 0, as before): training's streams are left alone
            with rng.seeded(0):
                return rng.svd_lowrank(s * self.lora_B.float() @ self.lora_A.float(), q=r, niter=2)
        qb, rb = torch.linalg.qr(self.lora_B.float())
        qa, ra = torch.linalg.qr(self.lora_A.float().t())
        u, sv, vh = torch.linalg.svd(s * rb @ ra.t())
        return qb @ u, sv, qa @ vh.t()

    def squeeze(self, k: int, optimizer: torch.optim.Optimizer | None = None) -> float:
        """Replace (B, A) by the best rank-k factorisation of ΔW; returns the fraction of ‖ΔW‖_F² kept."""
        k = min(k, self.lora_A.shape[0])
        with torch.no_grad():
            s = self.scaling
            u, sv, v = self._svd()
            new_s = s if self.config.rescale == "keep" else self.config.alpha / k
            root = torch.sqrt(sv[:k] / new_s)
            b = u[:, :k] * root
            a = root[:, None] * v[:, :k].t()
            energy = float((sv[:k] ** 2).sum() / (sv ** 2).sum().clamp_min(1e-30))
        old_a, old_b = self.lora_A, self.lora_B
        self.lora_A = nn.Parameter(a.to(old_a.dtype))
        self.lora_B = nn.Parameter(b.to(old_b.dtype))
        if optimizer is not None:  # a fresh optimizer state for the squeezed tensors (Cont-Squeeze)
            replace_parameter(optimizer, old_a, self.lora_A)
            replace_parameter(optimizer, old_b, self.lora_B)
        return energy

    def load_adapter_state(self, state):
        r = state["lora_A"].shape[0]
        if r != self.lora_A.shape[0]:
            self.lora_A = nn.Parameter(torch.empty_like(state["lora_A"]))
            self.lora_B = nn.Parameter(torch.empty_like(state["lora_B"]))
        super().load_adapter_state(state)


def squeeze(adaptation, k: int, optimizer=None) -> dict[str, float]:
    """Post-Squeeze every layer of a ``lora-squeeze`` adaptation to rank ``k``; returns the energy kept per module."""
    return {name: layer.squeeze(k, optimizer) for name, layer in adaptation.named_layers()}


def schedule(config: LoRASqueezeConfig, total_steps: int) -> dict[int, int]:
    """Step → rank to squeeze to after that step."""
    if config.mode == "post":
        return {max(0, math.ceil(config.squeeze_at * total_steps) - 1): config.target_r}
    if config.mode == "in":
        ranks, r = [], config.r
        for _ in range(config.n_squeezes):
            r = max(config.target_r, r // 2)
            ranks.append(r)
        ranks[-1] = config.target_r
        span = config.squeeze_at * total_steps
        return {max(0, round(span * (i + 1) / len(ranks)) - 1): r for i, r in enumerate(ranks)}
    return {}


@register("lora-squeeze", family="rank", paper=PAPER)
class LoRASqueeze(Variant):
    summary = ("Train LoRA at a high rank, where it learns easily, then compress the update to the small rank you "
               "deploy with a truncated SVD, and train a few more steps at that rank. Or anneal the rank while "
               "training. The paper finds this beats training at the small rank from the start.")
    formula = (r"$\Delta W = \frac{\alpha}{r_{src}} B A \xrightarrow{\text{SVD}_k} \frac{\alpha}{r_{src}} B' A',\ "
               r"B'A' \propto U_k\Sigma_k V_k^\top$")
    Config = LoRASqueezeConfig
    Layer = LoRASqueezeLayer
    dynamic = True
    example_config = {"r": 6, "target_r": 2}
    notes = ("Randomised SVD of ΔW (q = r, so exact for the rank-r ΔW) or the factored route (the paper's "
             "memory-efficient variant); the Σ split, the scale after a squeeze (ours: kept at α/r_src) and the "
             "In-Squeeze schedule (halvings) are not confirmed against the paper.")

    def __init__(self, config):
        super().__init__(config)
        self._plan: dict[int, int] | None = None
        self.energy: dict[int, dict[str, float]] = {}

    def on_step(self, ctx):
        adaptation, step, optimizer = ctx.adaptation, ctx.step, ctx.optimizer
        if self._plan is None:
            self._plan = schedule(self.config, ctx.total_steps)
        if step in self._plan:
            self.energy[step] = squeeze(adaptation, self._plan[step], optimizer)
