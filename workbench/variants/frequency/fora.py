"""FoRA: the frequency-aware low-rank adapter of FCL-COD.

Ni et al., CVPR 2026, arXiv:2603.22969. An input-dependent update on top of the frozen layer:
h = W0 x + W_d · S_fre(S_spa(W_e x)), with a bottleneck W_e ∈ R^{r×d_in} and an up-projection W_d ∈ R^{d_out×r}.
The r-dimensional bottleneck tokens are laid out on the patch grid and mixed there:

* S_spa: multi-scale spatial mixing, 1×1, 3×3 and 5×5 convolutions summed, with a residual connection;
* S_fre: 2-D FFT over the grid, a 3×3 convolution on the spectrum (real and imaginary parts as 2r channels),
  inverse FFT (real part), with a residual connection.

For token sequences without a grid the same is done in 1-D (convolutions and FFT along the tokens); a leading [CLS]
token in front of a square grid (a ViT: 1 + 16 tokens) skips the mixing. W_d = 0 at init, so h = W0 x at start.

Not mergeable (``has_weight = False``): the update depends on the whole token sequence, so no weight matrix stands
for it; ``delta_weight()`` does not exist and the ΔW probes skip FoRA layers. Not confirmed (the paper was not
readable here; from a third-party summary): initialisation, handling of complex values (here: real/imaginary
channels), the residual in S_fre, the 1-D adaptation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ... import rng
from ...settings import Preset
from ...variant import Variant, VariantConfig, VariantLayer, param, register

PAPER = ("Ni et al., 2026, Frequency-aware low-rank adaptation in FCL-COD (camouflaged object detection with SAM), "
         "CVPR 2026, arXiv:2603.22969")


@dataclass
class FoRAConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="bottleneck width")
    layout: str = param("auto", choices=("auto", "1d", "2d"),
                        help="token layout: a square patch grid (2d), a sequence (1d), or decided per input (auto: "
                             "a square number of tokens, after at most one leading [CLS], is taken as a grid, so "
                             "text models should say 1d; the text tasks' preset does)")


class FoRALayer(VariantLayer):
    linear_delta = False
    has_weight = False

    def __init__(self, base: nn.Linear, config: FoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        r, dev, dt = config.r, base.weight.device, base.weight.dtype
        self.down = nn.Parameter(torch.empty(r, base.in_features, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=rng.generator(dev))
        self.up = nn.Parameter(torch.zeros(base.out_features, r, device=dev, dtype=dt))
        # one set of kernels serves both layouts: 2-D kernels k×k, and their middle row for 1-D
        g = rng.generator(dev)
        self.spatial = nn.ParameterList(
            nn.Parameter(torch.randn(r, r, k, k, device=dev, dtype=dt, generator=g) / (r * k)) for k in (1, 3, 5))
        self.freq = nn.Parameter(torch.randn(2 * r, 2 * r, 3, 3, device=dev, dtype=dt, generator=g) / (2 * r * 3))

    # -- the two mixers on a (batch, r, *grid) tensor ----------------------------------------------------------
    def _spatial_kernel(self, two_d: bool) -> torch.Tensor:
        """One kernel for all of S_spa: the 1×1, 3×3 and 5×5 kernels zero-padded to the largest size and summed, plus
        the identity at the centre for the residual. Convolution is linear in the kernel, so
        z + Σ_k conv(z, K_k) = conv(z, I + Σ_k pad(K_k)) exactly, and each K_k's gradient is its crop of the combined
        kernel's: one convolution each way instead of three."""
        size = max(k.shape[-1] for k in self.spatial)
        if two_d:
            kernels = [F.pad(k, [(size - k.shape[-1]) // 2] * 4) for k in self.spatial]
        else:  # 1-D: the middle row of each kernel
            kernels = [F.pad(k[:, :, k.shape[-1] // 2], [(size - k.shape[-1]) // 2] * 2) for k in self.spatial]
        kernel = torch.stack(kernels).sum(0)
        identity = torch.zeros_like(kernel, requires_grad=False)
        identity[(slice(None), slice(None), *[size // 2] * (kernel.dim() - 2))] = torch.eye(len(kernel))
        return kernel + identity

    def _spatial(self, z: torch.Tensor) -> torch.Tensor:
        """S_spa(z) = z + conv₁ₓ₁(z) + conv₃ₓ₃(z) + conv₅ₓ₅(z), as one convolution (:meth:`_spatial_kernel`)."""
        kernel = self._spatial_kernel(z.dim() == 4)
        conv = F.conv2d if z.dim() == 4 else F.conv1d
        return conv(z, kernel, padding=kernel.shape[-1] // 2)

    def _frequency(self, z: torch.Tensor) -> torch.Tensor:
        dims = (-2, -1) if z.dim() == 4 else (-1,)
        spec = torch.fft.fftn(z, dim=dims)
        both = torch.cat([spec.real, spec.imag], dim=1)
        mixed = F.conv2d(both, self.freq, padding=1) if z.dim() == 4 else F.conv1d(both, self.freq[:, :, 1], padding=1)
        re, im = mixed.chunk(2, dim=1)
        return z + torch.fft.ifftn(torch.complex(re, im), dim=dims).real

    def _grid(self, n: int) -> tuple[int, int] | None:
        """(skip, side) when ``n`` tokens are a square grid, possibly after one leading [CLS] token."""
        if self.config.layout == "1d":
            return None
        for skip in (0, 1):
            side = math.isqrt(n - skip)
            if side > 1 and side * side == n - skip:
                return skip, side
        return None

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x if x.dim() >= 3 else x.unsqueeze(-2)        # (..., tokens, d_in)
        lead, n = seq.shape[:-2], seq.shape[-2]
        z = F.linear(seq.reshape(-1, n, seq.shape[-1]), self.down).transpose(1, 2)   # (batch, r, tokens)
        grid = self._grid(n)
        if grid is not None:
            skip, side = grid
            body = z[:, :, skip:].reshape(z.shape[0], z.shape[1], side, side)
            body = self._frequency(self._spatial(body)).flatten(2)
            z = torch.cat([z[:, :, :skip], body], dim=2) if skip else body
        else:
            z = self._frequency(self._spatial(z))
        out = F.linear(z.transpose(1, 2), self.up).reshape(*lead, n, -1)
        return out if x.dim() >= 3 else out.squeeze(-2)

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError("fora has no ΔW: its update depends on the input tokens")

    def effective_weight(self) -> torch.Tensor:
        raise NotImplementedError("fora has no effective weight: its update depends on the input tokens")

    def inspect(self):
        with torch.no_grad():
            k = torch.fft.fft2(self.freq.mean(dim=(0, 1)), s=(8, 8)).abs()
        return {"up_norm": torch.linalg.matrix_norm(self.up.detach()), "frequency_response": k}


@register("fora", family="frequency", paper=PAPER)
class FoRA(Variant):
    summary = ("A low-rank bottleneck whose tokens are mixed on the patch grid before going back up: convolutions "
               "at three scales, then a convolution on the grid's 2-D Fourier spectrum. The update depends on the "
               "neighbouring tokens and their frequencies, so it cannot be merged into the weight.")
    formula = (r"$h = W_0 x + W_d\, S_{fre}\big(S_{spa}(W_e x)\big),\quad S_{fre} ="
               r" \mathrm{iFFT2}\circ\mathrm{conv}_{3\times3}\circ\mathrm{FFT2}$")
    Config = FoRAConfig
    Layer = FoRALayer
    example_config = {"r": 4}
    notes = ("Init, complex handling (real/imag channels), the residual in S_fre and the 1-D version for sequences "
             "are our choices (paper not readable here). Not mergeable: no ΔW.")
    presets = tuple(
        Preset(task, config={"layout": "1d"},
               reason="text tokens are a sequence: with layout auto, a batch padded to 16, 25, 36, 49 or 64 tokens "
                      "would be mixed as a square image grid and any other length as a sequence")
        for task in ("text:*",))
