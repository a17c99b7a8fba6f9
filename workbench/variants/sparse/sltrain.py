"""SLTrain: a sparse plus low-rank parameterisation of each weight.

Han, Li, Xu, Mishra, Gao, NeurIPS 2024, "SLTrain: a sparse plus low-rank approach for parameter and memory efficient
pretraining", arXiv:2406.02214, Eq. (3):

    W = W0 + (α/r)·B A + S,

with B ∈ R^{out×r}, A ∈ R^{r×in} and S sparse on a **fixed random support** Ω of δ·out·in entries, drawn uniformly
once; only S's values on Ω are trained (their gradient is ∇W gathered on Ω). Trainable parameters per layer:
r(d_in + d_out) + δ·d_in·d_out (with δ·d_in·d_out rounded to the nearest integer, at least one).

Ω is drawn from a seed that the layer takes from its run's stream (:func:`workbench.rng.generator`) and keeps as a
one-number buffer; the indices are a non-persistent buffer regenerated from it (``torch.randperm`` on a generator
seeded with it), so a saved adapter holds the seed and the δ·out·in values, never a dense mask. As the paper's
kernel, the forward builds the dense weight W0 + (α/r) B A + S on the fly and runs one matmul.

Two modes. The paper's pretraining setting has no W0: ``from_scratch=True`` zeroes this layer's copy of the base
weight (the bias is kept, frozen) and initialises as the official code — B = 0, A Kaiming-uniform (a = √5),
S ~ U(±1/√d_in) — so the student starts from zero weights plus S, and ``update()`` is the whole learned weight
(``pretrained_weight()`` is the zero start). The default fine-tuning mode adds the same update to the frozen W0 with
S = 0, so the output is unchanged at init (B = 0 too); the sparse values then learn from ∇W on Ω like LoRA's B.

Settings: the paper's 60M model uses r = 128, α = 32, δ = 0.03 (lr 3e-3, no weight decay); for the workbench's
small layers the defaults are r = 8, α = 16 (the 130M–350M scale numerator), δ = 0.03. ``r = 0`` leaves the sparse
part alone (a sparse-only update on a random support, the paper's ablation).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ... import rng
from ...variant import DenseDeltaLayer, Variant, VariantConfig, param, register

PAPER = ("Han, Li, Xu, Mishra, Gao, 2024, SLTrain: a sparse plus low-rank approach for parameter and memory "
         "efficient pretraining, NeurIPS 2024, arXiv:2406.02214")


@dataclass
class SLTrainConfig(VariantConfig):
    r: int = param(8, low=0, high=min, help="rank of the low-rank part B A (0: the sparse part alone)")
    alpha: float = param(16.0, low=0, low_open=True, help="scale numerator: s = alpha / r")
    delta: float = param(0.03, low=0.0, high=1.0, low_open=True,
                         help="density δ of the sparse part's fixed random support")
    from_scratch: bool = param(False, help="pretraining mode: no W0, the student starts from zero weights plus S")


def support_size(shape: tuple[int, int], delta: float) -> int:
    """|Ω| = δ·out·in, rounded, at least 1 and at most every entry."""
    out_f, in_f = shape
    return min(out_f * in_f, max(1, round(delta * out_f * in_f)))


def support(seed: int, shape: tuple[int, int], delta: float, device=None) -> torch.Tensor:
    """The sorted flat indices of Ω: the first |Ω| entries of a permutation drawn from ``seed`` (uniform, without
    replacement); a function of the seed, so it is regenerated rather than stored."""
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(shape[0] * shape[1], generator=g)[:support_size(shape, delta)]
    return idx.sort().values.to(device)


class SLTrainLayer(DenseDeltaLayer):
    def __init__(self, base: nn.Linear, config: SLTrainConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        r, dev, dt = config.r, base.weight.device, base.weight.dtype
        n_in, n_out = base.in_features, base.out_features
        if config.from_scratch:
            self.base = copy.deepcopy(base)  # the caller's module keeps its weight
            with torch.no_grad():
                self.base.weight.zero_()
        self.lora_A = nn.Parameter(torch.empty(r, n_in, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(n_out, r, device=dev, dtype=dt))
        if r:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=rng.generator(dev))
        seed = int(torch.randint(0, 2**62, (1,), generator=rng.generator()).item())
        self.register_buffer("support_seed", torch.tensor(seed, dtype=torch.long, device=dev))
        self.register_buffer("support", support(seed, (n_out, n_in), config.delta, dev), persistent=False)
        self.sparse_values = nn.Parameter(torch.zeros(len(self.support), device=dev, dtype=dt))
        if config.from_scratch:
            bound = 1 / math.sqrt(n_in)
            with torch.no_grad():
                self.sparse_values.uniform_(-bound, bound, generator=rng.generator(dev))

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.r if self.config.r else 0.0

    def low_rank(self) -> torch.Tensor:
        return (self.lora_B * self.scaling) @ self.lora_A

    def sparse(self) -> torch.Tensor:
        """S as a dense (out, in) tensor, built from the values on Ω (differentiable in the values)."""
        flat = torch.zeros(self.out_features * self.in_features, device=self.sparse_values.device,
                           dtype=self.sparse_values.dtype)
        return flat.index_put((self.support,), self.sparse_values).view(self.out_features, self.in_features)

    def delta_weight(self) -> torch.Tensor:
        return self.low_rank() + self.sparse()

    def load_adapter_state(self, state):
        """Load, then regenerate Ω from the loaded seed."""
        super().load_adapter_state(state)
        self.support = support(int(self.support_seed), (self.out_features, self.in_features), self.config.delta,
                               self.support_seed.device)

    def inspect(self):
        with torch.no_grad():
            low, sparse = self.low_rank(), self.sparse()
            e_low, e_sparse = float(low.pow(2).sum()), float(sparse.pow(2).sum())
            return {"rank": torch.tensor(float(self.config.r)), "density": torch.tensor(self.config.delta),
                    "sparse_energy": torch.tensor(e_sparse / max(e_low + e_sparse, 1e-30)),
                    "low_rank_spectrum": torch.linalg.svdvals(low.float()),
                    "sparse_spectrum": torch.linalg.svdvals(sparse.float())}


@register("sltrain", family="sparse", paper=PAPER)
class SLTrain(Variant):
    summary = ("Add a low-rank update and a sparse one on a fixed random support: W = W0 + (α/r)·B A + S. The "
               "low-rank part captures the head of the spectrum and the sparse part, a few percent of the entries, "
               "adds the full-rank tail. In the paper it pretrains from scratch (no W0) near full-rank quality.")
    formula = (r"$W = W_0 + \frac{\alpha}{r} B A + S,\quad \mathrm{supp}(S) = \Omega$ fixed, "
               r"$|\Omega| = \delta\,d_{out}d_{in}$")
    Config = SLTrainConfig
    Layer = SLTrainLayer
    example_config = {"r": 2, "delta": 0.05}
    notes = ("Fine-tuning mode (the default) adds the update to a frozen W0 with S = 0 at init, so the output is "
             "unchanged; from_scratch=True is the paper's setting (zero weights, S ~ U(±1/√d_in), the base bias kept "
             "frozen). The support is regenerated from a stored seed; the forward builds the dense weight (the "
             "paper's kernel does too, in a fused custom op). r = 0 gives the sparse-only ablation.")


__all__ = ["SLTrain", "SLTrainLayer", "support", "support_size"]
