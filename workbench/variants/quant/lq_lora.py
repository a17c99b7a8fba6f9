"""LQ-LoRA: low-rank plus quantized matrix decomposition, then LoRA on the frozen quantized part.

Guo, Greengard, Xing, Kim, ICLR 2024, "LQ-LoRA: Low-rank Plus Quantized Matrix Decomposition for Efficient Language
Model Finetuning", arXiv:2311.12023.

**Decomposition** (§3.1, Alg. 1): W0 ≈ Q + L1 L2 with Q NF-quantized (:func:`workbench.quant.nf_quantize`) and
L1 L2 of rank r, by alternating, from Q = 0,

    L1 L2 ← rank-r randomised SVD of W0 − Q (oversampling 10, √σ on both factors),   Q ← Quant_c(W0 − L1 L2),

and stopping when ‖W0 − Q − L1 L2‖_F no longer falls (the state before the rise is kept). The randomised SVD is
:func:`workbench.rng.svd_lowrank` (torch's Halko et al. algorithm on the run's stream).

**Mixed precision by an integer linear program** (§3.2, Eq. (5)): with e_ic = ‖W_i − Q_ic − L1 L2‖²_F the error of
matrix i decomposed under configuration c and s_ic = bits_per_parameter(c)·|W_i| its storage,

    min Σ_ic x_ic e_ic   s.t.  Σ_ic x_ic s_ic ≤ bit_budget·Σ_i |W_i|,   Σ_c x_ic = 1,   x_ic ∈ {0, 1},

solved by ``scipy.optimize.milp`` (:func:`allocate`). The grid is b ∈ {2, 3, 4, 8} × B0 ∈ {16, 32, 64} at the
config's (b0, B1, b1) (``grid="bits"``, 12 configurations), or the paper's full 144 (``grid="full"``).

**Fisher weighting** (§3.3): with F the empirical diagonal Fisher of W (mean squared gradients on
``fisher_batches`` task batches, read in the full-precision model), D_r = √(row-mean F), D_c = √(col-mean F); the
SVD step decomposes D_r (W0 − Q) D_c and unscales its factors, the stopping rule reads ‖D_r (W0 − Q − L) D_c‖_F and
the ILP's cost is ‖√F ⊙ (W0 − Q − L)‖². The variant contract gives batches only to :meth:`LQLoRA.prepare` (which
``train()`` runs before the optimizer is built), so the weighted decomposition and the ILP happen there; ``adapt()``
alone builds every layer unweighted at the uniform configuration (b, b0, B0, B1, b1) of the config.

**Fine-tuning** trains B = L1/√s and A = L2/√s as a LoRA (s = α/r, so s·B A = L1 L2 at the start) on the frozen,
dequantized Q: the step is a LoRA step on a dequantized base. The change from the pretrained model is
``update() = Q + s·B A − W0`` (``pretrained_weight()`` is the full-precision W0 kept in the layer, as QWHA's).
Q is a deterministic function of W0, the initial factors and the chosen configuration, Q = Quant_c(W0 − s·B0 A0):
a saved adapter stores B0, A0 and c (five integers), never Q, and loading rebuilds the same Q. The factors start
at the decomposition, so weight decay toward 0 would undo it: they are in ``no_decay``.

Simplified: the paper's defaults are r = 64 (here 8, the workbench's LoRA default), a chunked ILP for 70B models
(one program over all targets here) and Fisher from C4 (here the task's own batches).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch import nn

from ... import rng
from ...quant import NF_GRID, NFConfig, bits_per_parameter, nf_quantize
from ...variant import ConfigError, Variant, VariantConfig, param, register
from ..lowrank.lora import LoRALayer

PAPER = ("Guo, Greengard, Xing, Kim, 2024, LQ-LoRA: Low-rank Plus Quantized Matrix Decomposition for Efficient "
         "Language Model Finetuning, ICLR 2024, arXiv:2311.12023")


@dataclass
class LQLoRAConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="rank of L1 L2 (the LoRA that fine-tuning trains); the paper uses 64")
    alpha: float = param(16.0, low=0, low_open=True, help="scale numerator: s = alpha / r (the code's 16)")
    dropout: float = param(0.0, low=0.0, high=0.99, help="dropout on the adapter's input (training only)")
    bits: int = param(4, choices=(2, 3, 4, 8), help="b: NF bits per weight of the uniform configuration")
    bits0: int = param(8, choices=(2, 3, 4, 8), help="b0: bits of each first-level (block) scale")
    block0: int = param(64, choices=(16, 32, 64), help="B0: weights sharing one first-level scale")
    block1: int = param(256, choices=(16, 64, 256), help="B1: first-level scales sharing one second-level scale")
    dtype1: str = param("fp32", choices=("fp32", "fp16", "bf16"), help="b1: storage of the second-level scales")
    iters: int = param(100, low=1, high=1000, help="most decomposition iterations (it stops when the error rises)")
    svd_iters: int = param(2, low=0, high=64, help="subspace iterations of the randomised SVD")
    bit_budget: float | None = param(None, low=1.0, high=16.0,
                                 help="bits per parameter for the ILP's mixed precision (none: uniform config)")
    grid: str = param("bits", choices=("bits", "full"),
                      help="ILP candidates: b × B0 at this b0, B1 (12), or the paper's full 144")
    fisher_batches: int = param(0, low=0, high=1000, help="task batches for the Fisher weights (0: unweighted)")

    def nf(self) -> NFConfig:
        return NFConfig(self.bits, self.bits0, self.block0, self.block1, self.dtype1)


@dataclass
class Decomposition:
    """Q + L1 L2 ≈ W and the error ‖W − Q − L1 L2‖ (weighted if weights were given) after every iteration run; when
    the loop stopped on a rise, ``errors[-1]`` is that rise and the returned state is the one before it."""

    q: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor
    errors: list[float]

    @property
    def error(self) -> float:
        return min(self.errors)


def decompose(w: torch.Tensor, r: int, cfg: NFConfig, iters: int = 100, svd_iters: int = 2, oversample: int = 10,
              row_weight: torch.Tensor | None = None, col_weight: torch.Tensor | None = None) -> Decomposition:
    """LQ-LoRA's Alg. 1 on ``w`` (out, in): alternate a rank-``r`` randomised SVD of W − Q and Q = Quant(W − L1 L2)
    until the error stops falling; with ``row_weight``/``col_weight`` (D_r, D_c), the SVD and the error are taken
    on D_r (·) D_c and the factors unscaled (§3.3)."""
    w = w.detach().float()
    dr = None if row_weight is None else row_weight.float().reshape(-1, 1)
    dc = None if col_weight is None else col_weight.float().reshape(1, -1)

    def weigh(m: torch.Tensor) -> torch.Tensor:
        return m if dr is None else dr * m * dc

    q = torch.zeros_like(w)
    k = min(r + oversample, *w.shape)
    best, errors = None, []
    for _ in range(iters):
        u, s, v = rng.svd_lowrank(weigh(w - q), q=k, niter=svd_iters)
        root = s[:r].sqrt()
        l1, l2 = u[:, :r] * root, (v[:, :r] * root).t()
        if dr is not None:
            l1, l2 = l1 / dr, l2 / dc
        q_new = nf_quantize(w - l1 @ l2, cfg)
        err = float(torch.linalg.matrix_norm(weigh(w - q_new - l1 @ l2)))
        errors.append(err)
        if best is not None and err >= best[0]:
            break
        best = (err, q_new, l1, l2)
    return Decomposition(best[1], best[2], best[3], errors)


def allocate(errors: np.ndarray, sizes, bits: np.ndarray, budget: float) -> np.ndarray:
    """The ILP of Eq. (5): one configuration per matrix (row of ``errors``, (n_matrices, n_configs)) minimising the
    total error with Σ bits·size ≤ budget·Σ size. Returns the chosen column per row; a budget below the cheapest
    configuration is a :class:`ConfigError`."""
    errors = np.asarray(errors, dtype=float)
    sizes = np.asarray(sizes, dtype=float)
    bits = np.asarray(bits, dtype=float)
    n, m = errors.shape
    cheapest = float(bits.min())
    if budget < cheapest - 1e-12:
        raise ConfigError(f"lq-lora: bit_budget={budget:g} bits/parameter is invalid; the cheapest configuration of "
                          f"the grid needs {cheapest:g}, so bit_budget must be in [{cheapest:g}, 16]")
    cost = errors / max(float(errors.max()), 1e-30)  # scaled: the solver's tolerances are absolute
    storage = (sizes[:, None] * bits[None, :]).reshape(1, -1) / sizes.sum()
    one_each = np.kron(np.eye(n), np.ones((1, m)))
    res = scipy.optimize.milp(cost.reshape(-1), integrality=np.ones(n * m),
                              bounds=scipy.optimize.Bounds(0, 1),
                              constraints=[scipy.optimize.LinearConstraint(one_each, 1, 1),
                                           scipy.optimize.LinearConstraint(storage, -np.inf, budget)])
    if not res.success:  # pragma: no cover - feasible whenever budget ≥ the cheapest configuration
        raise ConfigError(f"lq-lora: the bit-allocation ILP found no solution at bit_budget={budget:g} ({res.message})")
    return np.round(res.x).reshape(n, m).argmax(1)


def candidate_grid(config: LQLoRAConfig) -> tuple[NFConfig, ...]:
    if config.grid == "full":
        return NF_GRID
    return tuple(NFConfig(b, config.bits0, block0, config.block1, config.dtype1)
                 for b in (2, 3, 4, 8) for block0 in (16, 32, 64))


class LQLoRALayer(LoRALayer):
    """``forward(x) = Q x + s·B (A x)`` with Q the frozen dequantized NF weight; ``factors() = (s·B, A)``."""

    no_decay = ("lora_A", "lora_B")  # 0 is not "no change": s·B A starts at L1 L2

    def __init__(self, base: nn.Linear, config: LQLoRAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        # full precision, never saved: it is the caller's module's weight, and loading adapts that module again
        self.register_buffer("W0", base.weight.detach().clone(), persistent=False)
        self.base = copy.deepcopy(base)  # holds Q; the caller's module stays as it was
        self.register_buffer("init_A", torch.empty_like(self.lora_A))
        self.register_buffer("init_B", torch.empty_like(self.lora_B))
        self.register_buffer("qconfig", torch.tensor(config.nf().as_tuple(), device=base.weight.device))
        self.errors: list[float] = []
        self.initialise(self.decompose(config.nf()), config.nf())

    def reset_parameters(self) -> None:
        """No random init: the factors come from the decomposition."""

    @property
    def nf_config(self) -> NFConfig:
        return NFConfig.from_tuple(self.qconfig.tolist())

    def decompose(self, cfg: NFConfig, fisher: torch.Tensor | None = None) -> Decomposition:
        c = self.config
        if fisher is None:
            return decompose(self.W0, c.r, cfg, c.iters, c.svd_iters)
        row, col = fisher_scales(fisher)
        return decompose(self.W0, c.r, cfg, c.iters, c.svd_iters, row_weight=row, col_weight=col)

    def initialise(self, d: Decomposition, cfg: NFConfig) -> None:
        """Start the LoRA at ``d``'s factors (B = L1/√s, A = L2/√s) and re-quantize the base under ``cfg``."""
        root = self.scaling ** 0.5
        with torch.no_grad():
            dt = self.lora_A.dtype
            self.lora_B.copy_((d.l1 / root).to(dt))
            self.lora_A.copy_((d.l2 / root).to(dt))
            self.init_A.copy_(self.lora_A)
            self.init_B.copy_(self.lora_B)
            self.qconfig.copy_(torch.tensor(cfg.as_tuple()))
        self.errors = list(d.errors)
        self._rebuild_base()

    def low_rank_start(self) -> torch.Tensor:
        """s·B0 A0 = L1 L2, the low-rank part of the decomposition the LoRA started from."""
        return (self.init_B.float() @ self.init_A.float()) * self.scaling

    def _rebuild_base(self) -> None:
        """Q = Quant_c(W0 − s·B0 A0): the decomposition's last Q, from what the adapter saves."""
        with torch.no_grad():
            q = nf_quantize(self.W0.float() - self.low_rank_start(), self.nf_config)
            self.base.weight.copy_(q.to(self.base.weight.dtype))

    def load_adapter_state(self, state):
        super().load_adapter_state(state)
        self._rebuild_base()

    def pretrained_weight(self) -> torch.Tensor:
        """The full-precision W0 (the base holds Q)."""
        return self.W0

    def update_factors(self):
        """Q + s·B A − W0 = [Q − W0, s·B] @ [I; A]: exact, though Q − W0 is full rank (the quantisation error)."""
        eye = torch.eye(self.in_features, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return (torch.cat([self.base.weight - self.W0, self.lora_B * self.scaling], 1),
                torch.cat([eye, self.lora_A], 0))

    def peft_factors(self):
        """None: the LoRA is relative to Q, not to the W0 a PEFT base model holds; exports read ``update()``."""
        return None

    def inspect(self):
        with torch.no_grad():
            residual = self.W0 - self.base.weight - self.delta_weight()
            return {**super().inspect(),
                    "bits_per_parameter": torch.tensor(bits_per_parameter(self.nf_config)),
                    "quant_error": torch.linalg.matrix_norm(residual) / torch.linalg.matrix_norm(self.W0),
                    "decomposition_errors": torch.tensor(self.errors)}


def fisher_scales(fisher: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(D_r, D_c) = (√ row-mean F, √ col-mean F), floored at ``eps`` times their mean so no row divides by 0."""
    row, col = fisher.float().mean(1).sqrt(), fisher.float().mean(0).sqrt()
    return row.clamp_min(eps * float(row.mean()) + 1e-30), col.clamp_min(eps * float(col.mean()) + 1e-30)


def fisher_information(adaptation, task, batches, n_batches: int) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of every target's W: mean over ``n_batches`` batches of (∂loss/∂W)², read in the
    full-precision model (each base temporarily holds W0, every adapter disabled), as the paper reads it."""
    if task is None:
        raise ConfigError("lq-lora: fisher_batches > 0 needs a task to read gradients from (prepare() got none)")
    layers = dict(adaptation.named_layers())
    quantized = {n: layer.base.weight.detach().clone() for n, layer in layers.items()}
    weights = [layer.base.weight for layer in layers.values()]
    total = {n: torch.zeros_like(w) for n, w in zip(layers, weights)}
    try:
        with torch.no_grad():
            for layer in layers.values():
                layer.base.weight.copy_(layer.W0)
        for w in weights:
            w.requires_grad_(True)
        with adaptation.disabled(), torch.enable_grad():
            for _ in range(n_batches):
                grads = torch.autograd.grad(task.loss(adaptation.model, next(batches)), weights, allow_unused=True)
                for n, g in zip(layers, grads):
                    if g is not None:
                        total[n] += g.detach() ** 2
    finally:
        for w in weights:
            w.requires_grad_(False)
        with torch.no_grad():
            for n, layer in layers.items():
                layer.base.weight.copy_(quantized[n])
    return {n: t / n_batches for n, t in total.items()}


def error_table(adaptation, grid: tuple[NFConfig, ...], fisher: dict[str, torch.Tensor] | None = None):
    """Every layer decomposed under every configuration of ``grid``: ({name: [Decomposition per config]}, e) with
    e[i, c] = ‖W_i − Q_ic − L1 L2‖²_F, or ‖√F ⊙ (·)‖² for the layers ``fisher`` weighs (the ILP's costs)."""
    fisher = fisher or {}
    results, errors = {}, []
    for n, layer in adaptation.named_layers():
        results[n] = [layer.decompose(c, fisher.get(n)) for c in grid]
        row = []
        for d in results[n]:
            residual = layer.W0.float() - d.q - d.l1 @ d.l2
            if n in fisher:
                residual = residual * fisher[n].float().sqrt()
            row.append(float(residual.pow(2).sum()))
        errors.append(row)
    return results, np.array(errors)


def allocate_bits(adaptation, budget: float, fisher: dict[str, torch.Tensor] | None = None,
                  grid: tuple[NFConfig, ...] | None = None) -> dict[str, NFConfig]:
    """Decompose every layer under every configuration of ``grid`` (:func:`error_table`), choose one per layer by
    :func:`allocate` at ``budget`` bits per parameter, and re-initialise each layer at its choice. Returns the
    choices."""
    layers = dict(adaptation.named_layers())
    grid = grid or candidate_grid(adaptation.variant.config)
    results, errors = error_table(adaptation, grid, fisher)
    sizes = [layer.W0.numel() for layer in layers.values()]
    choice = allocate(errors, sizes, np.array([bits_per_parameter(c) for c in grid]), budget)
    chosen = {}
    for (n, layer), i in zip(layers.items(), choice):
        layer.initialise(results[n][i], grid[i])
        chosen[n] = grid[i]
    return chosen


@register("lq-lora", family="quant", paper=PAPER)
class LQLoRA(Variant):
    summary = ("Split each weight into a quantized part and a low-rank part, W0 ≈ Q + L1 L2, by alternating a "
               "randomised SVD with NormalFloat quantization until the error stops falling; an integer program picks "
               "each matrix's bit width under a bits-per-parameter budget. Fine-tuning trains L1, L2 as a LoRA on "
               "the frozen Q.")
    formula = (r"$W = Q + \frac{\alpha}{r} B A,\quad Q + L_1L_2 \approx W_0,\ "
               r"Q = \mathrm{Quant}_c(W_0 - L_1 L_2),\ B A|_{t=0} = \frac{r}{\alpha} L_1 L_2$")
    Config = LQLoRAConfig
    Layer = LQLoRALayer
    preserves_init = False  # Q + L1 L2 only approximates W0
    example_config = {"r": 2, "bits": 3, "block0": 16, "block1": 16, "iters": 8, "bit_budget": 3.6,
                      "fisher_batches": 1}
    notes = ("r = 8 by default (the paper's 64 is for 7B–70B models); the ILP is one scipy.optimize.milp program over "
             "all targets (the paper chunks 70B models) on a 12-configuration grid unless grid='full'; Fisher weights "
             "come from the task's own batches (the paper's C4) and, like the ILP, are applied in prepare() (train() "
             "runs it; adapt() alone builds every layer unweighted at the uniform configuration). The stop rule keeps "
             "the iterate before the error first fails to fall. Q is rebuilt on load from W0 and the saved initial "
             "factors (never stored). Forward is a LoRA step on the dequantized base.")

    def prepare(self, ctx, batches):
        """Fisher weights from ``fisher_batches`` batches and/or the ILP's bit allocation at ``bit_budget``."""
        cfg = self.config
        if not cfg.fisher_batches and cfg.bit_budget is None:
            return
        fisher = (fisher_information(ctx.adaptation, ctx.task, batches, cfg.fisher_batches)
                  if cfg.fisher_batches else {})
        if cfg.bit_budget is None:
            for n, layer in ctx.adaptation.named_layers():
                layer.initialise(layer.decompose(layer.nf_config, fisher[n]), layer.nf_config)
            return
        self.allocation = allocate_bits(ctx.adaptation, cfg.bit_budget, fisher)


__all__ = ["LQLoRA", "LQLoRALayer", "decompose", "allocate", "allocate_bits", "error_table", "fisher_information",
           "candidate_grid"]
