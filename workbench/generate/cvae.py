"""The conditional VAE of ICM-LoRA (Shao et al., IJCAI 2025, §3.3), scaled down.

Read from the released ``model/CVAE_design.py``: the flattened, normalised LoRA vector x (zero-padded to a multiple of
2^blocks) goes through ``blocks`` Conv1d blocks (kernel 7, stride 2, padding 3; channels 8-16-32-...-256-256-...-8,
rising then falling), a Linear to the latent width, then the condition embedding is concatenated and two Linears
give μ and log σ². The decoder mirrors it: Linear([z; c]) → ConvTranspose1d blocks (stride 2, output_padding 1) →
ConvTranspose1d → Conv1d to one channel. Loss (paper Eq. 5; ``forward`` of the released class):

    L = MSE(x̂, x) + β·KL(q(z | x, c) ‖ N(0, I)),   KL = mean over the batch of −½ Σ (1 + log σ² − μ² − σ²),  β = 0.005.

Changes, all for a CPU workbench with a few dozen checkpoints: ``blocks`` (paper 12) and the base ``channels``
(paper 8) and ``latent`` (paper 256) are options; GroupNorm replaces BatchNorm (batches of a few checkpoints make
BatchNorm's running statistics, used at generation in eval mode, unreliable); the condition is a *learned*
embedding (two Linears with SiLU) of the condition vector scaled to [0, 1] over the trained range, where the paper
uses the fine-tuned LLM's last-layer hidden state averaged over the task's samples (its "task vector", 768-d) as a
*given* condition, unembedded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng

__all__ = ["CVAE", "channel_widths"]


def channel_widths(blocks: int, base: int) -> list[int]:
    """The encoder's channels: base·2^min(i, blocks−1−i), the paper's 8-16-...-256-256-...-16-8 for 12 blocks."""
    return [base * 2 ** min(i, blocks - 1 - i) for i in range(blocks)]


def _groups(channels: int) -> int:
    return next(g for g in (4, 2, 1) if channels % g == 0)


class CVAE(nn.Module):
    """x ∈ R^length (normalised LoRA parameters), c ∈ R^cond_dim (the condition, scaled to [0, 1])."""

    def __init__(self, length: int, cond_dim: int, *, blocks: int = 4, channels: int = 8, kernel: int = 7,
                 latent: int = 16, embed: int = 16):
        super().__init__()
        self.length, self.latent = length, latent
        unit = 2 ** blocks
        self.padded = -(-length // unit) * unit
        widths = channel_widths(blocks, channels)
        self.widths, self.last_length = widths, self.padded // unit
        self.embed = nn.Sequential(nn.Linear(cond_dim, embed), nn.SiLU(), nn.Linear(embed, embed))
        enc, c_in = [], 1
        for w in widths:
            enc.append(nn.Sequential(nn.Conv1d(c_in, w, kernel, 2, kernel // 2), nn.GroupNorm(_groups(w), w),
                                     nn.LeakyReLU()))
            c_in = w
        self.encoder = nn.Sequential(*enc)
        flat = self.last_length * widths[-1]
        self.to_latent = nn.Linear(flat, latent)
        self.fc_mu = nn.Linear(latent + embed, latent)
        self.fc_var = nn.Linear(latent + embed, latent)
        self.to_decode = nn.Linear(latent + embed, flat)
        rev = widths[::-1]
        dec = [nn.Sequential(nn.ConvTranspose1d(rev[i], rev[i + 1], kernel, 2, kernel // 2, output_padding=1),
                             nn.GroupNorm(_groups(rev[i + 1]), rev[i + 1]), nn.ELU()) for i in range(len(rev) - 1)]
        self.decoder = nn.Sequential(*dec)
        self.final = nn.Sequential(nn.ConvTranspose1d(rev[-1], rev[-1], kernel, 2, kernel // 2, output_padding=1),
                                   nn.GroupNorm(_groups(rev[-1]), rev[-1]), nn.ELU(),
                                   nn.Conv1d(rev[-1], 1, kernel, 1, kernel // 2))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, self.padded - x.shape[-1]))

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self._pad(x)[:, None, :]).flatten(1)
        h = torch.cat([self.to_latent(h), self.embed(c)], dim=-1)
        return self.fc_mu(h), self.fc_var(h)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.to_decode(torch.cat([z, self.embed(c)], dim=-1)).view(-1, self.widths[-1], self.last_length)
        return self.final(self.decoder(h))[:, 0, :self.length]

    def loss(self, x: torch.Tensor, c: torch.Tensor, kl_weight: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(MSE + kl_weight·KL, MSE, KL) for a batch (the last two detached, not synced); z is drawn with the run's
        generator (:mod:`workbench.rng`)."""
        mu, log_var = self.encode(x, c)
        eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=rng.generator(mu.device))
        z = mu + eps * torch.exp(0.5 * log_var)
        mse = F.mse_loss(self.decode(z, c), x)
        kl = torch.mean(-0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=1))
        return mse + kl_weight * kl, mse.detach(), kl.detach()
