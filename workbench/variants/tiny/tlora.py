"""TLoRA: Transformed LoRA via tensor decomposition.

Tao, Takida, Murata, Zhao, Mitsufuji, ICCV 2025, arXiv:2501.08727, §3. The fine-tuned weight is W′ = W0·T + s·Δ
(input-side transform plus residual), with both parts in compact tensor forms:

* T (d_in × d_in) in tensor-ring-matrix (TRM) form: d_in = ∏_d J_d, cores A^d ∈ R^{J_d×J_d×R×R} and
  T[(i_1…i_D), (j_1…j_D)] = tr(∏_d A^d[i_d, j_d]); A^d[:, :, r, r′] = I/R at init (Proposition 1), so T = I exactly.
  With R = 1 the TRM is the Kronecker product of the cores (the official code's ``transform_rank=1`` branch).
* Δ (d_out × d_in) in tensor-ring (TR) form: output cores B^d ∈ R^{I_d×r×r}, input cores C^d ∈ R^{J_d×r×r},
  Δ[i, j] = tr(∏_d B^d[i_d] · ∏_d C^d[j_d]) (the code's ``ttv`` residual); B¹ = 0 so Δ = 0 at init.
* s = α/√r (the code calls the layer with ``use_rslora=True``), α = 1.
* Optional identity penalty γ·Σ_{d,r,r′} ‖A^d[:, :, r, r′] − I/R‖_F (§3, "better than orthogonality").

Checked against the code published with the paper (README "Code for the paper", copied at github.com/marcocst/PEFTDiff,
``subject-driven-generation/utils/attention_processor.py``, ``TTMLoRALinearLayer``): the TRM contraction, the
identity init, W0 @ T + scaling·Δ, s = α/√r, and the residual init (B¹ = 0, B^d ~ N(0, (√I_d / r²)²) for d > 1,
C^d ~ N(0, 1/J_d)); that code — not the paper's μP rule σ = Θ(√n_out/n_in) — fixes our init. Its training script
uses no identity penalty (AdamW, weight decay 1e-4), so γ defaults to 0 here; rank 1 and transform rank 1 are its
defaults. Its published script (``run_tlora.sh``) trains with ``addition_part='lora'``: the residual is a plain LoRA
Δ = B A (B = 0, A Kaiming-normal with a = √5, i.e. std 1/√(3·d_in)), still scaled by α/√r; ``addition_part="lora"``
offers it (r·(d_in + d_out) residual parameters instead of the TR cores'). The default, ``"ttv"``, is the TR residual
of the paper's §3 (TLoRA proper: TRM + TR). The code's third choice, a TT-matrix residual (``'ttm'``), is not
offered. Core sizes: the code uses a hand-written table (768 → 8·8·12); we factor each width into ``cores`` balanced
factors.

T is dense and full rank, so W0·T can rotate and rescale all of W0's input directions; DoRA is the special case of a
diagonal T. Not a linear delta in docs/DESIGN.md's sense (it multiplies W0), but the layer is still an exact linear
map with effective weight W0·T + s·Δ, which ``effective_weight()`` returns; ``delta_weight()`` is W0(T − I) + s·Δ and
merge keeps a backup. Cost: W0·T and Δ are assembled once per step and the layer runs one matmul; with R = 1 (the
default) T is a Kronecker product of the cores and W0·T is applied mode by mode (d_out·d_in·Σ J_d), for R > 1 the
dense T is built (d_in²·R²) and multiplied (d_out·d_in²). Not confirmed: the γ the paper used when it did use the
penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ... import rng
from ...variant import DenseDeltaLayer, Variant, VariantConfig, param, register
from ..transforms import kron_matmul

PAPER = ("Tao, Takida, Murata, Zhao, Mitsufuji, 2025, Transformed Low-rank Adaptation via Tensor Decomposition and Its "
         "Applications to Text-to-image Models, ICCV 2025, arXiv:2501.08727")


@dataclass
class TLoRAConfig(VariantConfig):
    cores: int = param(3, low=1, high=8, help="D: number of tensor cores each dimension is factored into")
    r: int = param(2, low=1, high=16, help="tensor-ring rank of the residual Δ")
    transform_rank: int = param(1, low=1, high=16, help="tensor-ring-matrix rank R of the transform T (code: 1)")
    alpha: float = param(1.0, low=0, low_open=True, help="residual scale numerator: s = alpha / sqrt(r) (code: 1)")
    identity_reg: float = param(0.0, low=0.0, help="γ of the identity penalty on T's cores (code: none)")
    addition_part: str = param("ttv", choices=("ttv", "lora"),
                               help="the residual Δ: ttv, the tensor-ring cores of §3; lora, the plain B A of the "
                                    "published script (addition_part='lora')")


def factorize(n: int, parts: int) -> list[int]:
    """``n`` as a product of ``parts`` integers, as balanced as its prime factors allow (largest first)."""
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    out = [1] * parts
    for q in sorted(primes, reverse=True):
        out[out.index(min(out))] *= q
    return sorted(out, reverse=True)


def ring_chain(cores: list[torch.Tensor]) -> torch.Tensor:
    """(∏ sizes, R, R): the ordered matrix product of one slice of each core, for every multi-index."""
    out = cores[0]
    for core in cores[1:]:
        out = torch.einsum("xab,ybc->xyac", out, core).flatten(0, 1)
    return out


def merge_kron(factors: list[torch.Tensor], width: int = 64) -> list[torch.Tensor]:
    """The same Kronecker product in fewer factors: neighbours multiplied out (``torch.kron``) while the merged
    factor stays ≤ ``width`` wide. Each factor is one pass of :func:`kron_matmul` over the whole matrix, and on a
    384-wide layer two passes (64, 6) cost less than three (8, 8, 6) although they do more multiply-adds."""
    merged = [factors[0]]
    for f in factors[1:]:
        if merged[-1].shape[0] * f.shape[0] <= width:
            merged[-1] = torch.kron(merged[-1], f)
        else:
            merged.append(f)
    return merged


class TLoRALayer(DenseDeltaLayer):
    no_decay = ("T_cores",)  # T starts at I: decaying its cores toward 0 shrinks W0·T (B¹ = 0 keeps Δ at 0)
    linear_delta = False

    def __init__(self, base: nn.Linear, config: TLoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        dev, dt = base.weight.device, base.weight.dtype
        self.J = factorize(base.in_features, config.cores)
        self.I = factorize(base.out_features, config.cores)
        R, r = config.transform_rank, config.r
        eye = [torch.eye(j)[:, :, None, None].expand(j, j, R, R) / R for j in self.J]
        self.T_cores = nn.ParameterList(nn.Parameter(e.clone()) for e in eye)
        if config.addition_part == "lora":  # the script's residual: B = 0, A Kaiming-normal (a = √5)
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
            self.lora_A = nn.Parameter(nn.init.kaiming_normal_(torch.empty(r, base.in_features), a=math.sqrt(5),
                                                                        generator=rng.generator()))
        else:  # official ttv init: B¹ = 0, B^d ~ N(0, (√I_d / r²)²) for d > 1, C^d ~ N(0, 1/J_d)
            g = rng.generator()
            self.B_cores = nn.ParameterList(
                nn.Parameter(torch.zeros(i, r, r) if d == 0
                             else torch.randn(i, r, r, generator=g) * (math.sqrt(i) / r ** 2))
                for d, i in enumerate(self.I))
            self.C_cores = nn.ParameterList(nn.Parameter(torch.randn(j, r, r, generator=g) / math.sqrt(j))
                                            for j in self.J)
        self.to(dev, dt)

    def transform(self) -> torch.Tensor:
        """T (d_in × d_in): trace over the ring of the TRM cores."""
        out = self.T_cores[0]
        for core in self.T_cores[1:]:
            out = torch.einsum("ijab,klbc->ikjlac", out, core).flatten(0, 1).flatten(1, 2)
        return torch.diagonal(out, dim1=-2, dim2=-1).sum(-1)

    @property
    def scaling(self) -> float:
        return self.config.alpha / math.sqrt(self.config.r)

    def residual_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, Q) with Δ = P Q: (B, A) for lora; for ttv, Δ[i, j] = Σ_{a,b} B̄[i, a, b] C̄[j, b, a] with B̄, C̄ the ring
        chains of the cores, so P = B̄ as (d_out, r²) and Q = C̄ with its ring indices swapped as (r², d_in)."""
        if self.config.addition_part == "lora":
            return self.lora_B, self.lora_A
        b, c = ring_chain(list(self.B_cores)), ring_chain(list(self.C_cores))
        return b.flatten(1), c.transpose(1, 2).flatten(1).t()

    def residual(self) -> torch.Tensor:
        """Δ (d_out × d_in) before the scale s: tr(∏B[i] ∏C[j]) (ttv), or B A (lora)."""
        p, q = self.residual_factors()
        return p @ q

    def transform_factors(self) -> list[torch.Tensor] | None:
        """With R = 1 the TRM is the Kronecker product T = A¹ ⊗ ⋯ ⊗ A^D of the J_d×J_d cores: those cores; else None."""
        if self.config.transform_rank != 1:
            return None
        return [core[:, :, 0, 0] for core in self.T_cores]

    def transformed_base(self) -> torch.Tensor:
        """W0·T. For R = 1, W0·T = W0 (Tᵀ)ᵀ with Tᵀ = A¹ᵀ ⊗ ⋯ ⊗ A^Dᵀ, applied by :func:`kron_matmul` mode by mode
        (d_out·d_in·Σ J_d multiply-adds; 384 = 8·8·6: 22 per entry instead of the 384 of a dense W0 @ T, and the same
        saving again for ∂L/∂T in the backward); for R > 1, the dense T of :meth:`transform`."""
        factors = self.transform_factors()
        if factors is None:
            return self.base.weight @ self.transform()
        return kron_matmul(self.base.weight, merge_kron([a.t() for a in factors]))

    def effective_weight(self) -> torch.Tensor:
        """W0·T + s·Δ, with s·P Q added by one ``addmm`` (no d_out×d_in temporaries for Δ and s·Δ)."""
        p, q = self.residual_factors()
        return torch.addmm(self.transformed_base(), p, q, alpha=self.scaling)

    def delta_weight(self) -> torch.Tensor:
        return self.effective_weight() - self.base.weight

    def inspect(self):
        with torch.no_grad():
            t = self.transform()
            return {"transform_deviation": torch.linalg.matrix_norm(t - torch.eye(len(t), device=t.device))}


@register("tlora", family="tiny", paper=PAPER)
class TLoRA(Variant):
    summary = ("Transform the pretrained weight instead of only adding to it: W' = W0·T + s·Δ, with a full-rank "
               "input transform T (starting at the identity) and a residual Δ, both stored as chains of small "
               "tensor cores, so a full-rank change costs a few hundred parameters per layer.")
    formula = (r"$W' = W_0\,T + \frac{\alpha}{\sqrt r}\Delta,\quad T = \mathrm{TRM}(A^1,\dots,A^D)\ (=I\ \text{at"
               r" init}),\ \Delta = \mathrm{TR}(B, C)$")
    Config = TLoRAConfig
    Layer = TLoRALayer
    example_config = {"cores": 2, "r": 2, "transform_rank": 2}
    notes = ("Init, s = α/√r and the TRM/TR contractions follow the code published with the paper; γ = 0 as in its "
             "training script (the penalty's strength in the paper is not confirmed); addition_part='lora' gives the "
             "script's plain LoRA residual ('ttm' not offered); not a linear delta: effective_weight() = W0·T + s·Δ.")

    def regularizer(self, ctx):
        adaptation = ctx.adaptation
        if self.config.identity_reg == 0:
            return None
        R = self.config.transform_rank
        terms = []
        for _, layer in adaptation.named_layers():
            for core in layer.T_cores:
                eye = torch.eye(core.shape[0], device=core.device, dtype=core.dtype)[:, :, None, None] / R
                terms.append(torch.linalg.vector_norm(core - eye, dim=(0, 1)).sum())
        return self.config.identity_reg * torch.stack(terms).sum()

