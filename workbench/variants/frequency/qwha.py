"""QWHA: Quantization-Aware Walsh-Hadamard Adaptation.

Jeon et al., 2025, arXiv:2509.17428. The frozen base is *quantized* (W_Q, dequantized) and the adapter is a sparse
update in the Walsh–Hadamard basis along the input dimension (Eq. (3)): y = (W_Q + ΔW) x with ΔW = F H⁻¹,
H the d_in×d_in ±1 Hadamard matrix (H⁻¹ = Hᵀ/d_in) and F sparse: p = r(d_in + d_out) trainable values c at fixed
indices E (parameter parity with rank-r LoRA). The contribution is the initialisation (§4), which starts the adapter
at a least-squares correction of the quantization error ΔW_Q = W0 − W_Q:

* **AdaAlloc** (Eq. (7)): channel i gets p_i = ⌊p·‖(ΔW_Q X)_i‖ / Σ_j ‖(ΔW_Q X)_j‖⌋ coefficients (t = 1), leftovers to
  the smallest allocations, each capped at d_in; X are calibration inputs of the layer.
* **Selection**: per channel, the p_i largest |x₀| of its dense coefficients x₀ = (ΔW_Q H)_i.
* **Refinement** (Eq. (9)): with X Xᵀ = U Σ Uᵀ, R = U Σ^{½}, v = (ΔW_Q)_i R and B′ the selected rows of H⁻¹R,
  x* = v B′ᵀ (B′ B′ᵀ)⁻¹: the coefficients that minimise the channel's output error ‖((ΔW_Q)_i − x S) X‖.

Without calibration data (``adapt()`` alone) X = I is used; ``prepare()`` (run by ``train()``) re-initialises from
``calib_batches`` batches of the task. The quantizer is the project's own: round-to-nearest (asymmetric min-max) or
NormalFloat levels, per group of ``group_size`` inputs, 2/3/4 bits (the paper uses GPTQ + MagR; not included): the
shared :func:`workbench.quant.quantize`, which LQ-LoRA's quantizer sits beside. The
base copy lives in the layer, so ``Adaptation.remove()`` gives back the original full-precision module.
Hadamard matrices of order 2^k (Sylvester) and (q+1)·2^k for primes q ≡ 3 mod 4 (Paley), so 384 = 12·32 works; the
code also has orders 28, 36, ... that are not built here. Simplified: the code's extra scale (scale/√d_out) and its
candidate weighting by basis-row norms are not used.

Two differences from the official code (issue 14, item 7), kept and stated:

* **Calibration model.** ``prepare()`` collects X at each layer's input in the *adapted* model, whose earlier layers
  are already quantised (W_Q + F H⁻¹ at their X = I initialisation); the official code collects X from the
  full-precision model. The two differ by the upstream layers' remaining quantisation error.
* **Allocation weights.** AdaAlloc here weighs channel i by ‖(ΔW_Q X)_i‖ (the paper's Eq. (7), with X through
  R = U Σ^{½}); the official code weighs it by ‖x₀,ᵢ‖, the norm of the channel's dense Walsh–Hadamard coefficients
  x₀ = (ΔW_Q H)_i, which does not see the data (the two agree for X = I up to the constant √d_in).

The change from the pretrained model is ``update() = W_Q + F H⁻¹ − W0`` (``pretrained_weight()`` is the full-precision
W0 kept in the layer), not the adapter's own F H⁻¹: probes, figures and exports read that (before, ``rel_error`` on
synthetic:lowrank after 50 steps read 0.965 where the change from W0 was 0.954). The coefficients start at the
correction of the quantisation error, so weight decay toward 0 would undo it: they are in ``no_decay``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import scipy.linalg
import torch
from torch import nn

from ...quant import nf_levels, quantize  # noqa: F401 - the shared quantizer (workbench.quant); re-exported
from ...variant import ConfigError, DenseDeltaLayer, Variant, VariantConfig, param, register
from ..transforms import kron_matmul

PAPER = ("Jeon et al., 2025, QWHA: Quantization-Aware Walsh-Hadamard Adaptation for Parameter-Efficient Fine-Tuning on"
         " Large Language Models, arXiv:2509.17428")


@dataclass
class QWHAConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="LoRA-parity budget: p = r (d_in + d_out) coefficients per layer")
    bits: int = param(4, choices=(2, 3, 4), help="bits of the quantized base")
    quantizer: str = param("rtn", choices=("rtn", "nf"), help="round-to-nearest (min-max) or NormalFloat levels")
    group_size: int = param(64, low=1, help="inputs sharing one quantization scale")
    calib_batches: int = param(4, low=0, high=1000, help="task batches for the calibration inputs X (0: X = I)")

    def check(self, shapes):
        for name, (o, i) in shapes.items():
            if hadamard_order(i) is None:
                raise ConfigError(f"qwha: layer {name} ({o}x{i}) is invalid; its input width must be 2^k or "
                                  "(q+1)·2^k for a prime q ≡ 3 mod 4 (e.g. 384 = 12·32) for a Hadamard transform")


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % d for d in range(2, math.isqrt(q) + 1))


def _paley(m: int) -> torch.Tensor | None:
    """A Hadamard matrix of order m = q + 1 for a prime q ≡ 3 (mod 4) (Paley's first construction), else None."""
    q = m - 1
    if not (_is_prime(q) and q % 4 == 3):
        return None
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if i in squares else -1 for i in range(1, q)], dtype=torch.float64)
    jacobsthal = torch.stack([chi.roll(i) for i in range(q)])  # Q[i, j] = χ(j − i)
    s = torch.zeros(m, m, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jacobsthal
    return torch.eye(m, dtype=torch.float64) + s


def hadamard_order(n: int) -> tuple[int, int] | None:
    """(m, 2^k) with n = m·2^k and a Hadamard matrix of order m known here (1, or Paley's q + 1)."""
    power = n & -n
    while power >= 1:  # 384 = 12·32: the Paley part (12 = 11 + 1) may itself be even
        m = n // power
        if m == 1 or _paley(m) is not None:
            return m, power
        power //= 2
    return None


def hadamard(n: int, device=None, dtype=None) -> torch.Tensor:
    """A ±1 matrix with H Hᵀ = n I, for n = 2^k (Sylvester) or (q+1)·2^k (Paley ⊗ Sylvester), e.g. 384 = 12·32."""
    m, power = hadamard_order(n)
    h = torch.from_numpy(scipy.linalg.hadamard(power)).double()
    if m > 1:
        h = torch.kron(_paley(m), h)
    return h.to(device=device, dtype=dtype or torch.float32)


def hadamard_factors(n: int, device=None, dtype=None) -> list[torch.Tensor]:
    """Small ±1 matrices whose Kronecker product is :func:`hadamard` (n): the Paley part (order m, when m > 1) and
    the Sylvester part 2^k, split in two above order 64 since Sylvester's H_{2^(a+b)} = H_{2^a} ⊗ H_{2^b} (384: 12
    and 32; 4096: 64 and 64). ΔW = F H⁻¹ (Eq. (3)) is then applied by :func:`kron_matmul` in d_out·d_in·Σ orders
    multiply-adds instead of d_out·d_in² with the dense H."""
    m, orders = _factor_orders(n)
    parts = [_paley(m)] if m > 1 else []
    parts += [torch.from_numpy(scipy.linalg.hadamard(o)).double() for o in orders[1 if m > 1 else 0:]]
    return [h.to(device=device, dtype=dtype or torch.float32) for h in parts]


def _factor_orders(n: int) -> tuple[int, list[int]]:
    """(m, the orders of :func:`hadamard_factors` (n)), from :func:`_order` without building any matrix."""
    m, power = _order(n)
    k = power.bit_length() - 1
    sylvester = [1 << e for e in ((k - k // 2, k // 2) if power > 64 else (k,)) if e > 0]
    return m, ([m] if m > 1 else []) + sylvester or [1]


def ada_alloc(norms: torch.Tensor, budget: int, cap: int) -> torch.Tensor:
    """Per-channel counts ∝ norms (floored), leftovers to the smallest allocations, each ≤ cap."""
    share = norms / norms.sum().clamp_min(1e-30)
    counts = torch.floor(budget * share).long().clamp(max=cap)
    leftover = budget - int(counts.sum())
    while leftover > 0:
        open_rows = (counts < cap).nonzero().flatten()
        if len(open_rows) == 0:
            break
        order = open_rows[torch.argsort(counts[open_rows], stable=True)]
        take = order[:leftover]
        counts[take] += 1
        leftover -= len(take)
    return counts


def _order(n: int) -> tuple[int, int]:
    """:func:`hadamard_order` without building the Paley matrix it tests (that is m² floats), (1, n) if none."""
    power = n & -n
    while power >= 1:
        m = n // power
        if m == 1 or (_is_prime(m - 1) and (m - 1) % 4 == 3):
            return m, power
        power //= 2
    return 1, n


def build_bytes(config: QWHAConfig, out_f: int, in_f: int) -> tuple[int, int]:
    """(bytes a float32 ``out_f``×``in_f`` layer keeps, bytes alive at the peak of building it), from the config.

    Kept: W0 and the quantized copy of the base (8·d_out·d_in + 4·d_out for its bias), H (4·d_in²) and its Kronecker
    factors (4·Σ orders², :func:`hadamard_factors`), and the p = min(r(d_in + d_out), d_out·d_in) rows, columns
    (long) and coefficients (20·p). The peak is the largest of
    three phases, each on top of what is kept by then:

    * :func:`quantize`: the padded copy and two elementwise temporaries (RTN, 12 bytes an entry), or the
      distances to the 2^bits NF levels and their absolute values (4·(1 + 2·2^bits) bytes an entry);
    * :func:`hadamard`: ``scipy.linalg.hadamard``'s last Sylvester step (18·P² for the 2^k part P, int64), then for
      Paley widths the float64 Kronecker product and its float32 copy (12·d_in² + 8·P²);
    * :meth:`QWHALayer.initialise` in float64: ΔW_Q, x₀ and v (8·d_out·d_in each), H, R and H⁻¹R (8·d_in² each,
      plus H⁻¹'s scaled copy while H⁻¹R is formed), and the channels' lstsq solutions, each of which keeps a
      d_in-long float64 storage (another 8·d_out·d_in), with the index lists, the tensor overhead and the heap
      left by each channel's lstsq temporaries (≈ 8 KiB a channel, measured).

    Measured peaks (RSS, glibc's mmap threshold fixed at 64 KiB) come within 0.75–1.3× of this."""
    p = min(config.r * (in_f + out_f), out_f * in_f)
    padded = out_f * (in_f + (-in_f) % min(config.group_size, in_f))
    copies = 8 * out_f * in_f + 4 * out_f
    kept = copies + 4 * in_f * in_f + 4 * sum(o * o for o in _factor_orders(in_f)[1]) + 20 * p
    quant = 12 * padded if config.quantizer == "rtn" else 4 * padded * (1 + 2 * 2 ** config.bits)
    m, power = _order(in_f)
    had = 18 * power * power if m == 1 else max(18 * power * power, 8 * power * power + 12 * in_f * in_f)
    wide, square = 8 * out_f * in_f, 8 * in_f * in_f
    init = max(2 * wide + 4 * square, 4 * wide + 3 * square + 28 * p + 8192 * out_f)
    if config.calib_batches:  # initialise(gram): the eigenvectors of X Xᵀ stay alive next to R
        init += square
    return kept, max(copies + quant, copies + had, kept + init)


class QWHALayer(DenseDeltaLayer):
    frequency_basis = "wht"  # F's rows/cols index Walsh–Hadamard coefficients
    frequency_sides = "input"  # ΔW = F H⁻¹: only the input side is transformed; F's rows are channels
    no_decay = ("coefficients",)  # they start at the quantisation-error correction: decay toward 0 would undo it

    def __init__(self, base: nn.Linear, config: QWHAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        self.register_buffer("W0", base.weight.detach().clone())  # full precision, for the error it corrects
        self.base = copy.deepcopy(base)
        with torch.no_grad():
            self.base.weight.copy_(quantize(base.weight, config.bits, config.group_size, config.quantizer))
        n_in, n_out = base.in_features, base.out_features
        self.p = min(config.r * (n_in + n_out), n_in * n_out)
        self.register_buffer("H", hadamard(n_in, base.weight.device, base.weight.dtype), persistent=False)
        parts = hadamard_factors(n_in, base.weight.device, base.weight.dtype)
        self.hadamard_parts = len(parts)
        for i, part in enumerate(parts):
            self.register_buffer(f"H_part{i}", part, persistent=False)  # H = H_part0 ⊗ H_part1 ⊗ ⋯
        self.register_buffer("rows", torch.zeros(self.p, dtype=torch.long, device=base.weight.device))
        self.register_buffer("cols", torch.zeros(self.p, dtype=torch.long, device=base.weight.device))
        self.coefficients = nn.Parameter(torch.zeros(self.p, device=base.weight.device, dtype=base.weight.dtype))
        self.initialise(None)

    def pretrained_weight(self) -> torch.Tensor:
        """The full-precision W0 (the base holds W_Q)."""
        return self.W0

    def quant_error(self) -> torch.Tensor:
        return self.W0 - self.base.weight

    def initialise(self, gram: torch.Tensor | None) -> None:
        """AdaAlloc + top-|x₀| selection + least-squares refinement (X Xᵀ = ``gram``; None means X = I)."""
        n_in = self.in_features
        with torch.no_grad():
            dq = self.quant_error().double()
            h = self.H.double()
            if gram is None:
                r_mat = torch.eye(n_in, dtype=torch.float64, device=dq.device)
            else:
                evals, evecs = torch.linalg.eigh(gram.double())
                r_mat = evecs * evals.clamp_min(0).sqrt()
            counts = ada_alloc(torch.linalg.vector_norm(dq @ r_mat, dim=1), self.p, n_in)
            x0 = dq @ h                               # F = ΔW H: dense coefficients of every channel
            h_inv_r = (h.t() / n_in) @ r_mat        # rows of H⁻¹, seen through the data
            v_all = dq @ r_mat
            rows, cols, vals = [], [], []
            for i, k in enumerate(counts.tolist()):
                if k == 0:
                    continue
                sel = torch.topk(x0[i].abs(), k).indices
                b = h_inv_r[sel]                      # B′: (k, d_in)
                sol = torch.linalg.lstsq(b.t(), v_all[i][:, None]).solution.flatten()  # x* = v B′ᵀ(B′B′ᵀ)⁻¹
                rows.append(torch.full((k,), i, dtype=torch.long))
                cols.append(sel.cpu())
                vals.append(sol)
            self.rows.copy_(torch.cat(rows).to(self.rows.device))
            self.cols.copy_(torch.cat(cols).to(self.cols.device))
            self.coefficients.copy_(torch.cat(vals).to(self.coefficients.dtype))

    def hadamard_parts_list(self) -> list[torch.Tensor]:
        """The Kronecker factors of H (buffers ``H_part0``, ...): H = H_part0 ⊗ H_part1 ⊗ ⋯."""
        return [getattr(self, f"H_part{i}") for i in range(self.hadamard_parts)]

    def delta_weight(self) -> torch.Tensor:
        """ΔW = F H⁻¹ = F Hᵀ / d_in (Eq. (3)), F the sparse coefficients scattered at (rows, cols). H is applied
        through its Kronecker factors (:func:`hadamard_factors`): the dense F Hᵀ was two d_out·d_in² products a step
        (forward, and ∂L/∂F = ∂L/∂ΔW · H / d_in in the backward), the factored one is ≈ 9× fewer multiply-adds."""
        f = torch.zeros(self.out_features, self.in_features, device=self.coefficients.device,
                        dtype=self.coefficients.dtype).index_put((self.rows, self.cols), self.coefficients)
        return kron_matmul(f, self.hadamard_parts_list()) / self.in_features

    def inspect(self):
        with torch.no_grad():
            residual = self.quant_error() - self.delta_weight()
            return {"coefficients": self.coefficients.detach().clone(),
                    "locations": torch.stack([self.rows, self.cols], 1).float(),
                    "quant_error": torch.linalg.matrix_norm(residual) / torch.linalg.matrix_norm(self.W0),
                    "allocation": torch.bincount(self.rows, minlength=self.out_features).float()}


@register("qwha", family="frequency", paper=PAPER)
class QWHA(Variant):
    summary = ("Fine-tune a quantized model with a sparse update in the Walsh–Hadamard basis, started where it "
               "cancels most of the quantization error: each output channel gets coefficients in proportion to its "
               "error on real inputs, the largest ones are kept and their values solved by least squares.")
    formula = r"$y = (W_Q + F H^{-1})\,x,\quad F$ sparse with $p = r(d_{in} + d_{out})$ trained values"
    Config = QWHAConfig
    Layer = QWHALayer
    preserves_init = False  # the base is quantized: the output changes even though the adapter corrects most of it
    example_config = {"r": 2, "bits": 3, "group_size": 16, "calib_batches": 2}
    notes = ("Own RTN/NF quantizer instead of GPTQ+MagR; no extra code scale; input widths 2^k or (q+1)·2^k only; the "
             "NF levels for 2-3 bits are normal quantiles (QLoRA defines NF4 only). Calibration inputs X are read "
             "in the quantised adapted model (the official code reads the full-precision model), and AdaAlloc "
             "weighs channels by ‖(ΔW_Q X)_i‖ as the paper's Eq. (7) (the official code uses ‖x₀,ᵢ‖, the norm of "
             "the dense WHT coefficients). Probes read the change from the full-precision W0, W_Q + F H⁻¹ − W0; the "
             "coefficients are not weight-decayed (decay would undo the quantisation-error correction).")

    @classmethod
    def estimate_bytes(cls, cfg: QWHAConfig, shapes: dict[str, tuple[int, int]]) -> int:
        """Peak bytes of building the adapter on ``shapes`` (out, in), read by ``memory.adaptation_bytes``: AdaAlloc
        reads values (``.item()``) and H comes from NumPy, so the layers cannot be built on ``meta`` to be counted.
        What every layer keeps, plus the largest build temporary of one layer (freed before the next is built),
        plus, when ``calib_batches`` > 0, the float64 X Xᵀ that :meth:`prepare` holds for every layer at once."""
        sizes = [build_bytes(cfg, o, i) for o, i in shapes.values()]
        grams = sum(8 * i * i for _, i in shapes.values()) if cfg.calib_batches else 0
        return sum(kept for kept, _ in sizes) + grams + max((peak - kept for kept, peak in sizes), default=0)

    def prepare(self, ctx, batches):
        adaptation, task = ctx.adaptation, ctx.task
        """Re-initialise every layer from calibration inputs X (X Xᵀ summed over ``calib_batches`` batches)."""
        if self.config.calib_batches == 0:
            return
        grams, handles = {}, []

        def hook(name):
            def fn(module, args, output):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                grams[name] = grams.get(name, 0) + x.t() @ x
            return fn

        for name, layer in adaptation.named_layers():
            handles.append(layer.register_forward_hook(hook(name)))
        try:
            with torch.no_grad():
                for _ in range(self.config.calib_batches):
                    task.loss(adaptation.model, next(batches))
        finally:
            for h in handles:
                h.remove()
        for name, layer in adaptation.named_layers():
            if name in grams:
                layer.initialise(grams[name])
