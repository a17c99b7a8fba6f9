"""RandLoRA: Full-rank parameter-efficient fine-tuning of large models.

Albert et al., ICLR 2025, arXiv:2502.00987, Eq. (4): for d_in ≤ d_out,
ΔW = s · Σ_{n=1}^{N} B_n diag(λ_n) A diag(γ_n), with N = ⌈min(d_in, d_out)/r⌉ frozen random bases B_n ∈ R^{d_out×r},
one frozen random A ∈ R^{r×d_in} shared by all bases, and trainable λ_n ∈ R^r and γ_n ∈ R^m, m = min(d_in, d_out)
(γ always on the smaller side; the roles swap when d_out < d_in). N·r ≥ m, so ΔW can be full rank.

Definitions and defaults follow PEFT 0.21 (``tuners/randlora``): r = 32, α = 640, s = α/r (PEFT's choice, endorsed
by the authors); α left unset is 20·r, PEFT's "typically 20 times the rank", which is 640 at r = 32 and keeps
s = 20 when another r is chosen (a budget search). The paper and the authors' own repository scale by α/(r·√N)
instead, so an α taken from the paper is √N times too large here: use α_paper/√N (N = ⌈min(d_in, d_out)/r⌉, e.g. 24
bases for a 768-wide layer at r = 32). The bases are
Kaiming-uniform from a generator seeded with ``projection_prng_key``, divided by their global standard deviation,
drawn once at the largest needed size and sliced per layer (including PEFT's flattening order of the basis index).
They are drawn in bfloat16 as PEFT draws them (PEFT falls back to float16 where bfloat16 is unavailable; here it
is always bfloat16) and then cast to float32, so the same key gives PEFT's bases bit for bit and a PEFT RandLoRA
adapter's λ, γ carry over unchanged.
λ = 0 and γ = 1/max(N, m) at init. Bases are regenerated from the key, never saved.

Cost: the dense ΔW is built once per step (N·r·d_in·d_out ≈ d_in·d_out·m multiply-adds, whatever the batch) and
the layer runs one matmul with W0 + ΔW. PEFT instead runs two factored products per token, each as wide as the
layer (N·r ≥ m), about T·m·(d_in + d_out) for T tokens: counting forward and backward, the dense route is cheaper
once T exceeds about 0.6·m tokens per step on square layers, i.e. for any real batch (measured on 4 x Linear(384,
384), 16 x 64 tokens, 2 CPU threads: 28 ms against 47 ms for the factored route and 49 ms for PEFT; on
all-MiniLM-L6-v2 1.3x the frozen floor against PEFT's 2.0x). Not included: the ``sparse``/``very_sparse`` ternary bases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...settings import Preset
from ...variant import DenseDeltaLayer, Shared, Variant, VariantConfig, param, register

PAPER = ("Albert et al., 2025, RandLoRA: Full-rank parameter-efficient fine-tuning of large models, ICLR 2025, "
         "arXiv:2502.00987")


@dataclass
class RandLoRAConfig(VariantConfig):
    r: int = param(32, low=1, high=min, help="rank of each random basis (smaller r: more bases, more parameters)")
    alpha: float | None = param(None, low=0, low_open=True,
                                help="scale numerator: s = alpha / r (none: 20 r, so s = 20 at every r: PEFT's "
                                     "default 640 at its r = 32, and its advice \"typically 20 times the rank\")")
    projection_prng_key: int = param(0, low=0, help="seed of the shared random bases")


def n_bases(shape: tuple[int, int], r: int) -> int:
    return math.ceil(min(shape) / r)


def kaiming(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """PEFT's ``_kaiming_init``: Kaiming-uniform (a = √5) drawn in bfloat16, which fixes the random stream."""
    return nn.init.kaiming_uniform_(torch.empty(shape, dtype=torch.bfloat16), a=math.sqrt(5), generator=generator)


class RandLoRAShared(Shared):
    """A: (r, 1, min_dim) shared by every basis; B: (max_dim, N, r); both std-normalised, from the key."""

    def __init__(self, config: RandLoRAConfig, shapes, seed):
        super().__init__(config, shapes, seed)
        out_dim = max(s[0] for s in shapes.values())
        in_dim = max(s[1] for s in shapes.values())
        big, small = max(out_dim, in_dim), min(out_dim, in_dim)
        g = torch.Generator().manual_seed(config.projection_prng_key)
        a = kaiming((config.r, 1, small), g)
        b = torch.cat([kaiming((big, 1, config.r), g) for _ in range(n_bases((out_dim, in_dim), config.r))], dim=1)
        self.register_buffer("A", (a / a.std()).float(), persistent=False)
        self.register_buffer("B", (b / b.std()).float(), persistent=False)


class RandLoRALayer(DenseDeltaLayer):
    def __init__(self, base: nn.Linear, config: RandLoRAConfig, shared: RandLoRAShared = None, name: str = ""):
        super().__init__(base, config, shared, name)
        self.n = n_bases((base.out_features, base.in_features), config.r)
        small = min(base.out_features, base.in_features)
        dev, dt = base.weight.device, base.weight.dtype
        self.lambdas = nn.Parameter(torch.zeros(config.r, self.n, device=dev, dtype=dt))
        self.gammas = nn.Parameter(torch.full((self.n, small), 1.0 / max(self.n, small), device=dev, dtype=dt))

    @property
    def scaling(self) -> float:
        """s = α / r; with α unset, 20 (α = 20 r). A fixed α would scale the update by 640 / r when a budget search
        (``compare(budget=...)``) lowers r: at r = 4 on the digits ViT, s = 160, and every swept rate failed (test
        accuracy 0.17, the untrained 0.16), where s = 20 trains to ~0.88 (issue 19's study)."""
        alpha = self.config.alpha if self.config.alpha is not None else 20.0 * self.config.r
        return alpha / self.config.r

    def factors(self):
        """(B', A') with ΔW = B' A' (rank ≤ N·r), in PEFT's order of the flattened basis index."""
        small, big = min(self.in_features, self.out_features), max(self.in_features, self.out_features)
        a = self.shared.A[:, :, :small]                                       # (r, 1, small)
        b = self.shared.B[:big, : self.n, :].flatten(start_dim=1)            # (big, N·r)
        scaled_a = (self.lambdas[:, :, None] * a * self.gammas[None]).flatten(end_dim=1)  # (r·N, small)
        if small == self.in_features:
            return b[: self.out_features] * self.scaling, scaled_a
        return scaled_a.t() * self.scaling, b[: self.in_features].t()

    def inspect(self):
        return {"lambdas": self.lambdas.detach().clone(), "gammas": self.gammas.detach().clone()}


@register("randlora", family="basis", paper=PAPER)
class RandLoRA(Variant):
    summary = ("A full-rank update from many frozen random low-rank bases: each layer learns only a diagonal "
               "scaling per basis (λ) and per input feature (γ). The bases together span every direction, so "
               "RandLoRA can fit updates LoRA cannot at the same parameter count.")
    formula = (r"$\Delta W = \frac{\alpha}{r}\sum_{n=1}^{N} B_n\,\mathrm{diag}(\lambda_n)\,A\,\mathrm{diag}(\gamma_n),"
               r"\ N = \lceil \min(d_{in}, d_{out})/r \rceil$")
    Config = RandLoRAConfig
    Layer = RandLoRALayer
    SharedModule = RandLoRAShared
    example_config = {"r": 8, "alpha": 160.0}
    presets = (Preset("digits:*", settings={"lr": 3e-3},
                      reason="s = 20 makes the task's 1e-2 too fast: validation accuracy 0.59 at 1e-2, 0.88 at 1e-3 "
                             "and 3e-3 (2 seeds, 150 steps, digits:rotate)"),
               Preset("text:*", settings={"lr": 3e-4},
                      reason="at text:sst2's 3e-3 every seed collapses to one class (val 0.509, the head's start "
                             "0.780); 1e-3 reaches 0.852 and 3e-4 0.857 (seed 0, 300 steps)"))
    notes = ("Matches PEFT 0.21's RandLoRA (dense bases), s = α/r; the paper and its repository use α/(r√N), so α "
             "values from the paper do not transfer (use α/√N). The sparse ternary bases are not implemented.")
