"""PiSSA: Principal Singular values and Singular vectors Adaptation.

Meng, Wang, Zhang, NeurIPS 2024, arXiv:2404.02948, §3: W0 = U S Vᵀ; the adapter starts at the principal rank-r
part, A = S_r^{½} V_rᵀ and B = U_r S_r^{½}, and the frozen base becomes the residual W_res = W0 − B A, so the
model's output is unchanged at init while training moves the principal directions (Eq. (2)–(4)). As in PEFT 0.21
(``init_lora_weights="pissa"`` / ``"pissa_niter_k"``), S_r is divided by the scale s first so that s·B A is
exactly the rank-r part; ``niter > 0`` uses the fast randomized SVD (Halko et al.) with that many iterations.

The residual lives in this layer's own copy of the base ``nn.Linear``, so ``Adaptation.remove()`` gives back the
untouched original. The initial factors are kept (r·(in+out) numbers) so that a saved adapter rebuilds exactly the
same residual when loaded.

The change from the pretrained model is not ``factors()`` (s·B A, relative to W_res: at init the top-r part of W0)
but ``update() = W_res + s·B A − W0 = s·(B A − B0 A0)``, with ``pretrained_weight() = W_res + s·B0 A0``; probes,
figures and exports read that (before, the spectra probe read s·B A: ‖ΔW‖/‖W0‖ 0.49 where the true change was 0.047
after 20 steps on synthetic:lowrank at lr 1e-3, and ``rel_error`` 1.40 against 0.98). Weight decay: the factors start
at the principal part, so decaying them toward 0 moves W away from W0 (12–18% in 200 steps at wd 0.1 with zero
gradients); they are in ``no_decay``. (PEFT with the HF Trainer decays them; with weight decay 0, as the paper's
runs, the two agree.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ... import rng
from ...variant import Variant, VariantConfig, param, register
from .lora import LoRALayer

PAPER = ("Meng, Wang, Zhang, 2024, PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large "
         "Language Models, NeurIPS 2024, arXiv:2404.02948")


@dataclass
class PiSSAConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="rank of the principal part moved into the adapter")
    alpha: float = param(8.0, low=0, low_open=True, help="scale numerator: s = alpha / r")
    dropout: float = param(0.0, low=0.0, high=0.99, help="dropout on the adapter's input (training only)")
    niter: int = param(0, low=0, high=64, help="0: exact SVD; k > 0: randomized SVD with k subspace iterations")


class PiSSALayer(LoRALayer):
    no_decay = ("lora_A", "lora_B")  # 0 is not "no change": B A starts at the top-r part of W0

    def __init__(self, base: nn.Linear, config: PiSSAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        self.base = copy.deepcopy(base)  # holds W_res; the caller's module stays as it was
        self.register_buffer("init_A", torch.empty_like(self.lora_A))
        self.register_buffer("init_B", torch.empty_like(self.lora_B))
        self._principal_init()

    def reset_parameters(self) -> None:
        """No random init: the factors come from the SVD of W0 (``_principal_init``)."""

    def _principal_init(self) -> None:
        r, s = self.config.r, self.scaling
        with torch.no_grad():
            w = self.base.weight.float()
            if self.config.niter > 0:
                u, sv, v = rng.svd_lowrank(w, q=r, niter=self.config.niter)  # torch's, on this layer's stream
                vh = v.t()
            else:
                u, sv, vh = torch.linalg.svd(w, full_matrices=False)
                u, sv, vh = u[:, :r], sv[:r], vh[:r]
            root = torch.sqrt(sv / s)
            a, b = (root[:, None] * vh), (u * root[None, :])
            dt = self.base.weight.dtype
            self.lora_A.copy_(a.to(dt))
            self.lora_B.copy_(b.to(dt))
            self.init_A.copy_(self.lora_A)
            self.init_B.copy_(self.lora_B)
            self.base.weight.copy_((w - s * (b @ a)).to(dt))

    def load_adapter_state(self, state):
        """Load, then rebuild W_res from the saved initial factors (robust to SVD sign/rounding differences)."""
        old = (self.init_B @ self.init_A) * self.scaling
        super().load_adapter_state(state)
        with torch.no_grad():
            self.base.weight.add_(old - (self.init_B @ self.init_A) * self.scaling)

    def pretrained_weight(self) -> torch.Tensor:
        """The original W0 = W_res + s·B0 A0 (to float rounding; the caller's module holds it exactly)."""
        return self.base.weight + (self.init_B @ self.init_A) * self.scaling

    def update(self) -> torch.Tensor:
        """s·(B A − B0 A0): the change from W0 (exactly 0 at init), not the principal part that ``factors()`` holds."""
        return (self.lora_B @ self.lora_A - self.init_B @ self.init_A) * self.scaling

    def update_factors(self):
        """s·(B A − B0 A0) = [s(B − B0), s·B0] @ [A; A − A0], rank ≤ 2r; both differences are exactly 0 at init."""
        s = self.scaling
        return (torch.cat([(self.lora_B - self.init_B) * s, self.init_B * s], 1),
                torch.cat([self.lora_A, self.lora_A - self.init_A], 0))

    def peft_factors(self):
        """Relative to the *original* W0, as PEFT's ``path_initial_model_for_weight_conversion`` exports PiSSA:
        W_res + s·B A − W0 = s·(B A − B0 A0), a LoRA of rank 2r with A' = [A; A0] and B' = [B, −B0] (scale
        s = 2α/2r = α/r, see :meth:`PiSSA.peft_settings`), so the adapter loads onto the untouched base model."""
        with torch.no_grad():
            return torch.cat([self.lora_A, self.init_A], 0), torch.cat([self.lora_B, -self.init_B], 1), None

    def inspect(self):
        return {**super().inspect(), "residual_norm": torch.linalg.matrix_norm(self.base.weight).detach()}


@register("pissa", family="lowrank", paper=PAPER)
class PiSSA(Variant):
    summary = ("LoRA initialised at the principal singular directions of W0 instead of zero: B A starts as the "
               "top-r part of W0 and the frozen base keeps the rest. Same output at init, but the adapter trains "
               "the directions that matter most, which converges faster than LoRA in the paper.")
    formula = r"$W = W_{res} + B A,\quad B A|_{t=0} = U_r S_r V_r^\top,\ W_{res} = W_0 - U_r S_r V_r^\top$"
    Config = PiSSAConfig
    Layer = PiSSALayer
    example_config = {"r": 4}
    notes = ("Probes, figures and exports read the change from the original W0, s·(B A − B0 A0), not s·B A (relative "
             "to the residual). The factors are kept out of weight decay (0 is not 'no change' for them; PEFT with "
             "the HF Trainer would decay them toward 0).")

    @classmethod
    def peft_settings(cls, config):
        """Rank 2r (the trained and the initial factors side by side) at the same scale α/r."""
        return {"r": 2 * config.r, "lora_alpha": 2 * config.alpha, "use_rslora": False, "use_dora": False}
