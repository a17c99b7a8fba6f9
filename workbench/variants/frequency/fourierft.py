"""FourierFT: Parameter-Efficient Fine-Tuning with Discrete Fourier Transform.

Gao et al., ICML 2024, arXiv:2405.03003, Eq. (2)–(3): ΔW = α · Re(IDFT2(F)) where the d_out×d_in spectrum F is zero
except for n real coefficients c at entries E. E is drawn uniformly without replacement from a seed and shared by
all layers of the same shape (the code's ``share_entry``); only c trains. Definitions and defaults follow PEFT 0.21
(``tuners/fourierft``): n_frequency = 1000, scaling α = 150, random_loc_seed = 777, c ~ N(0, 1) at init (so ΔW is
small but not zero at step 0: ``preserves_init`` is False), torch's default inverse-FFT normalisation 1/(d_out·d_in).

Cost: ΔW is built once per step by one inverse FFT and the layer runs a single matmul with W0 + ΔW, so a step costs
about what full fine-tuning of the layer costs (the factored form Re(P diag(c) Q) would cost n·(d_in + d_out) per
token, more than the d_in·d_out of the dense product for n = 1000 on 384-wide layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ... import rng
from ...settings import Preset
from ...variant import DenseDeltaLayer, Variant, VariantConfig, param, register

PAPER = ("Gao et al., 2024, Parameter-Efficient Fine-Tuning with Discrete Fourier Transform, ICML 2024, "
         "arXiv:2405.03003")


@dataclass
class FourierFTConfig(VariantConfig):
    n_frequency: int = param(1000, low=1, high=lambda shape: shape[0] * shape[1],
                             help="number of trainable spectral coefficients per layer")
    scaling: float = param(150.0, low=0, low_open=True, help="α: ΔW = α · Re(IDFT2(F))")
    random_loc_seed: int = param(777, low=0, help="seed of the shared spectral entries")
    init_zero: bool = param(False, help="start the coefficients at zero (PEFT's init_weights=True) instead of N(0,1)")


def spectral_entries(out_features: int, in_features: int, n: int, seed: int) -> torch.Tensor:
    """The (2, n) row/column indices of the trainable entries, as PEFT draws them."""
    flat = torch.randperm(out_features * in_features, generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([flat // in_features, flat % in_features])


class FourierFTLayer(DenseDeltaLayer):
    frequency_basis = "fft"  # entries index the (unshifted) 2-D FFT spectrum of ΔW
    def __init__(self, base: nn.Linear, config: FourierFTConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        n = config.n_frequency
        self.register_buffer("entries", spectral_entries(base.out_features, base.in_features, n,
                                                         config.random_loc_seed).to(base.weight.device),
                             persistent=False)
        init = torch.zeros(n) if config.init_zero else torch.randn(n, generator=rng.generator())
        self.spectrum = nn.Parameter(init.to(base.weight.device, base.weight.dtype))

    def delta_weight(self) -> torch.Tensor:
        dense = torch.zeros(self.out_features, self.in_features, device=self.spectrum.device)
        dense = dense.index_put((self.entries[0], self.entries[1]), self.spectrum.float())
        return (torch.fft.ifft2(dense).real * self.config.scaling).to(self.spectrum.dtype)

    def inspect(self):
        return {"coefficients": self.spectrum.detach().clone(), "locations": self.entries.t().float()}


@register("fourierft", family="frequency", paper=PAPER)
class FourierFT(Variant):
    summary = ("Learn n real coefficients of ΔW's 2-D Fourier spectrum at fixed random frequencies (the same for "
               "every layer) and get ΔW by an inverse FFT. A few thousand numbers per layer can express a full-rank "
               "update, far fewer parameters than LoRA.")
    formula = (r"$\Delta W = \alpha\,\mathrm{Re}\big(\mathrm{IDFT2}(F)\big),\quad F_{E} = c \in \mathbb{R}^n,\ F_{\bar"
               r" E} = 0$")
    Config = FourierFTConfig
    Layer = FourierFTLayer
    preserves_init = False
    example_config = {"n_frequency": 64, "scaling": 150.0}
    budget_field = "n_frequency"
    notes = "Matches PEFT 0.21's FourierFT; ΔW is built once per step with one inverse FFT."
    presets = tuple(  # the same small-layer values on both synthetic and digits tasks
        Preset(task, config={"init_zero": True},
               reason="c = 0 at init (PEFT's init_weights=True): α 150 with N(0, 1) coefficients is sized for "
                      "768-wide layers; on 64×64 ifft2 divides by 144× less and the initial ΔW alone gives loss ~40")
        for task in ("synthetic:*", "digits:*"))
