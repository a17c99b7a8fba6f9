"""FourierFT: Parameter-Efficient Fine-Tuning with Discrete Fourier Transform.

Gao et al., ICML 2024, arXiv:2405.03003, Eq. (2)–(3): ΔW = α · Re(IDFT2(F)) where the d_out×d_in spectrum F is zero
except for n real coefficients c at entries E. E is drawn uniformly without replacement from a seed and shared by
all layers of the same shape (the code's ``share_entry``); only c trains. Definitions and defaults follow PEFT 0.21
(``tuners/fourierft``): n_frequency = 1000, scaling α = 150, random_loc_seed = 777, c ~ N(0, 1) at init (so ΔW is
small but not zero at step 0: ``preserves_init`` is False), torch's default inverse-FFT normalisation 1/(d_out·d_in).

Cost: ΔW is built once per step by one inverse FFT and the layer runs a single matmul with W0 + ΔW, so a step costs
about what full fine-tuning of the layer costs (the factored form Re(P diag(c) Q) would cost n·(d_in + d_out) per
token, more than the d_in·d_out of the dense product for n = 1000 on 384-wide layers). The inverse FFT is a real one
(``irfft2``) on half the spectrum: for a real F, Re(IDFT2(F)) = IDFT2(H) with H(k, l) = (F(k, l) + F(−k, −l)) / 2
Hermitian, so H's columns 0 … d_in/2 determine it (:func:`hermitian_entries`). The result equals PEFT's
``ifft2(F).real`` to float rounding at about half the cost of the complex transform (issue 24's profile: the
complex ``ifft2`` and its backward were 43% of FourierFT's excess step time over LoRA on MiniLM).
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


def hermitian_entries(entries: torch.Tensor, out_features: int,
                      in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each coefficient lands in the half spectrum H[:, :in_features // 2 + 1] of its Hermitian part (see the
    module docstring): the (2, m) row/column indices and the (m,) index of the coefficient each comes from, for the
    weight 1/2 at (k, l) and 1/2 at (−k, −l), keeping only the columns ≤ in_features // 2 (a self-conjugate entry,
    e.g. (0, 0), receives both halves)."""
    rows, cols = entries
    rr = torch.cat([rows, (-rows) % out_features])
    cc = torch.cat([cols, (-cols) % in_features])
    source = torch.arange(len(rows), device=entries.device).repeat(2)
    keep = cc <= in_features // 2
    return torch.stack([rr[keep], cc[keep]]), source[keep]


class FourierFTLayer(DenseDeltaLayer):
    frequency_basis = "fft"  # entries index the (unshifted) 2-D FFT spectrum of ΔW
    def __init__(self, base: nn.Linear, config: FourierFTConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        n = config.n_frequency
        with torch.device("cpu"):  # real values (the memory estimate builds layers on "meta"), then moved
            entries = spectral_entries(base.out_features, base.in_features, n, config.random_loc_seed).cpu()
            half, source = hermitian_entries(entries, base.out_features, base.in_features)
        dev = base.weight.device
        self.register_buffer("entries", entries.to(dev), persistent=False)
        self.register_buffer("half_entries", half.to(dev), persistent=False)
        self.register_buffer("half_source", source.to(dev), persistent=False)
        init = torch.zeros(n) if config.init_zero else torch.randn(n, generator=rng.generator())
        self.spectrum = nn.Parameter(init.to(base.weight.device, base.weight.dtype))

    def delta_weight(self) -> torch.Tensor:
        """α · Re(IDFT2(F)) (Eq. 3), computed as α · irfft2(H) on the half spectrum (the module docstring)."""
        d_out, d_in = self.out_features, self.in_features
        half = torch.zeros(d_out, d_in // 2 + 1, device=self.spectrum.device)
        values = 0.5 * self.spectrum.float()[self.half_source]
        half = half.index_put((self.half_entries[0], self.half_entries[1]), values, accumulate=True)
        dw = torch.fft.irfft2(half, s=(d_out, d_in))
        return (dw * self.config.scaling).to(self.spectrum.dtype)

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
