"""LoCA: Location-Aware Cosine Adaptation.

Du et al., ICLR 2025, "LoCA: Location-Aware Cosine Adaptation for Parameter-Efficient Fine-Tuning",
arXiv:2502.06820. ΔW = α · C_outᵀ S(a, l) C_in (Eq. (5)) with orthonormal DCT-II matrices C and a spectrum S that is
zero except for n coefficients a_k at integer locations l_k. Unlike FourierFT, the locations are learned:

* each location is a continuous pair (u_k, v_k) ∈ [0, 1]², mapped to round(clamp(u, 0, 0.999)·(d − 1)) (duplicates
  add up); a starts at 0 (ΔW = 0), the pairs Uniform[0, 1] (official layer);
* ∂L/∂a_k = (∂L/∂S)[l_k], and ∂L/∂S = α·C_out (∂L/∂ΔW) C_inᵀ is the DCT of the weight gradient (Eq. (7));
* the location gradient is a central finite difference of ∂L/∂S on the DCT grid (Eq. (8)–(9)):
  ½·a_k·(∂S[r+1, c] − ∂S[r−1, c]) for rows (columns alike), clipped to [−1, 1], times (d − 1) for the map from u to
  the index, and zero where the location is clamped;
* alternating schedule (§4.3; the official layer's ``_advance_schedule``): 30-step cycles starting at step 0, the
  coefficients train at steps with ``step % 30 < 10`` and the locations at ``step % 30 >= 10``, until
  ``search_steps`` (≈10% of training, the code's ``learn_location_iter``); from then on the locations are frozen for
  good (stored as integers) and only the n coefficients train.
* locations have their own learning rate (1e-4 in the paper). Adam moves a continuous location by about its rate
  per step and one grid cell is 1/(d − 1) of its range, so an index moves by ≈ loc_lr·(d − 1) cells per location
  step: ≈ 0.08 cells on a 768-wide layer at 1e-4, ≈ 0.006 on a 64-wide one (issue 14 measured 16 of 256 locations
  changing cell in a 200-step run at 1e-4, against 243 at 1e-2), which is why the small-task presets raise
  ``loc_lr``.

Cost: the layer builds ΔW once per step and runs one matmul with W0 + ΔW. S has n non-zeros, so S C_in is n scaled
rows of C_in and C_outᵀ (S C_in) is an inverse DCT of its columns, by FFT; the backward's C_out (∂L/∂ΔW) is a DCT by
FFT too, whose rows give ∂L/∂a at the locations (one product with C_inᵀ, for ∂L/∂S in full, only while the locations
train). The DCT matrices are built once as buffers.
The finite difference is taken on ∂L/∂S (α times the DCT of ∂L/∂ΔW), as in the official layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import scipy.fft
import torch
from torch import nn

from ... import rng
from ...settings import Preset
from ...variant import DenseDeltaLayer, Variant, VariantConfig, param, register
from ..transforms import dct_rows, idct_rows

PAPER = ("Du et al., 2025, LoCA: Location-Aware Cosine Adaptation for Parameter-Efficient Fine-Tuning, ICLR 2025, "
         "arXiv:2502.06820")
CYCLE, COEF_STEPS = 30, 10


@dataclass
class LoCAConfig(VariantConfig):
    n: int = param(1000, low=1, high=lambda shape: shape[0] * shape[1], help="number of spectral coefficients")
    scaling: float = param(1.0, low=0, low_open=True, help="α: ΔW = α · C_outᵀ S C_in")
    loc_lr: float = param(1e-4, low=0, low_open=True, help="learning rate of the location parameters")
    search_fraction: float = param(0.1, low=0.0, high=1.0, help="fraction of training during which locations move")


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix C with C x = dct(x, norm='ortho')."""
    return torch.from_numpy(scipy.fft.dct(torch.eye(n, dtype=torch.float64).numpy(), norm="ortho", axis=0)).float()


def build_bytes(config: LoCAConfig, out_f: int, in_f: int) -> tuple[int, int]:
    """(bytes a float32 ``out_f``×``in_f`` layer keeps, bytes alive at the peak of building it), from the config.

    Kept: C_out and C_in (4·(d_out² + d_in²)), the n coefficients and the 2×n continuous locations (12·n).
    Peak: :func:`dct_matrix` holds the float64 identity and its DCT (8·d² each) before the float32 copy is made,
    so building C_out peaks at 16·d_out², and building C_in at 4·d_out² + 16·d_in² (C_out already kept)."""
    kept = 4 * (out_f * out_f + in_f * in_f) + 12 * config.n
    return kept, max(16 * out_f * out_f, 4 * out_f * out_f + 16 * in_f * in_f, kept)


def grid_index(u: torch.Tensor, size: int) -> torch.Tensor:
    return torch.round(u.clamp(0.0, 0.999) * (size - 1)).long()


def location_gradient(grad_at, coef, loc, r, c, rows: int, cols: int) -> torch.Tensor:
    """LoCA's location gradient (Eq. (8)–(9)) from ``grad_at(rr, cc)``, ∂L/∂S at the index pairs (rr, cc): the
    clipped central differences ½·a·(∂S[r+1, c] − ∂S[r−1, c]) (rows; columns alike) times (d − 1), zero where a
    location is clamped. The four neighbours of every location are read in one call."""
    n = len(coef)
    neighbours = grad_at(torch.cat([(r + 1).clamp(max=rows - 1), (r - 1).clamp(min=0), r, r]),
                         torch.cat([c, c, (c + 1).clamp(max=cols - 1), (c - 1).clamp(min=0)]))
    up, down, right, left = neighbours.split(n)
    g_row = (0.5 * coef * (up - down)).clamp(-1, 1) * (rows - 1)
    g_col = (0.5 * coef * (right - left)).clamp(-1, 1) * (cols - 1)
    inside = (loc >= 0) & (loc <= 0.999)
    return torch.stack([g_row, g_col]) * inside


class _SparseSpectrum(torch.autograd.Function):
    """S from (a, locations); its backward gives a's gradient and LoCA's finite-difference location gradient."""

    @staticmethod
    def forward(ctx, coef, loc, rows: int, cols: int):
        r, c = grid_index(loc[0], rows), grid_index(loc[1], cols)
        spectrum = torch.zeros(rows, cols, device=coef.device, dtype=coef.dtype).index_put((r, c), coef,
                                                                                           accumulate=True)
        ctx.save_for_backward(coef, loc, r, c)
        ctx.shape = (rows, cols)
        return spectrum

    @staticmethod
    def backward(ctx, grad_s):
        coef, loc, r, c = ctx.saved_tensors
        rows, cols = ctx.shape
        grad_coef = grad_s[r, c]
        grad_loc = None
        if ctx.needs_input_grad[1]:
            grad_loc = location_gradient(lambda rr, cc: grad_s[rr, cc], coef, loc, r, c, rows, cols)
        return grad_coef, grad_loc, None, None


class _CosineDelta(torch.autograd.Function):
    """ΔW = α · C_outᵀ S(a, l) C_in (Eq. (5)) from (a, locations), with the same gradients as autograd through
    :class:`_SparseSpectrum` and the two dense products, without any d_out·d_out·d_in product (four before):

    * forward: S C_in is a sum of n scaled rows of C_in (``index_add``, n·d_in), then C_outᵀ (S C_in) is an inverse
      DCT of its columns by FFT (:func:`idct_rows`, d_out log d_out per column);
    * backward: M = C_out (∂L/∂ΔW) is a DCT of the columns by FFT (:func:`dct_rows`); ∂L/∂S = α·M C_inᵀ (Eq. (7))
      is then needed only at the n locations (a's gradient: n dot products of M's rows with C_in's) or, while the
      locations train, in full for the finite differences (:func:`location_gradient`), as the official layer takes
      them (one d_out·d_in² product on those steps)."""

    @staticmethod
    def forward(ctx, coef, loc, rows: int, c_in, scaling: float):
        cols = len(c_in)
        r, c = grid_index(loc[0], rows), grid_index(loc[1], cols)
        rows_of_c_in = (scaling * coef)[:, None] * c_in.index_select(0, c)  # α·a_k · C_in[l_k, :]
        s_c_in = torch.zeros(rows, cols, device=coef.device, dtype=coef.dtype).index_add_(0, r, rows_of_c_in)
        ctx.save_for_backward(coef, loc, r, c, c_in)
        ctx.scaling, ctx.rows = scaling, rows
        return idct_rows(s_c_in)  # C_outᵀ (S C_in)

    @staticmethod
    def backward(ctx, grad_w):
        coef, loc, r, c, c_in = ctx.saved_tensors
        m = dct_rows(grad_w)  # C_out ∂L/∂ΔW; ∂L/∂S = α·m C_inᵀ
        grad_coef = grad_loc = None
        if ctx.needs_input_grad[1]:  # finite differences read 4n more entries: form ∂L/∂S once
            grad_s = ctx.scaling * (m @ c_in.t())
            grad_coef = grad_s[r, c]
            grad_loc = location_gradient(lambda rr, cc: grad_s[rr, cc], coef, loc, r, c, ctx.rows, len(c_in))
        elif ctx.needs_input_grad[0]:
            grad_coef = ctx.scaling * (m.index_select(0, r) * c_in.index_select(0, c)).sum(-1)
        return grad_coef, grad_loc, None, None, None


class LoCALayer(DenseDeltaLayer):
    learned_locations = True  # a finite-difference gradient moves them during the search phase
    def __init__(self, base: nn.Linear, config: LoCAConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        dev, dt = base.weight.device, base.weight.dtype
        self.register_buffer("C_out", dct_matrix(base.out_features).to(dev, dt), persistent=False)
        self.register_buffer("C_in", dct_matrix(base.in_features).to(dev, dt), persistent=False)
        self.coefficients = nn.Parameter(torch.zeros(config.n, device=dev, dtype=dt))
        self.locations = nn.Parameter(torch.rand(2, config.n, device=dev, dtype=dt, generator=rng.generator(dev)))

    def spectrum(self) -> torch.Tensor:
        return _SparseSpectrum.apply(self.coefficients, self.locations, self.out_features, self.in_features)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = α · C_outᵀ S C_in (Eq. (5)), by :class:`_CosineDelta` (S's sparsity used on both passes)."""
        return _CosineDelta.apply(self.coefficients, self.locations, self.out_features, self.C_in, self.config.scaling)

    def grid_locations(self) -> torch.Tensor:
        """(n, 2) integer (row, column) positions in the DCT grid."""
        return torch.stack([grid_index(self.locations[0], self.out_features),
                            grid_index(self.locations[1], self.in_features)], dim=1)

    def inspect(self):
        return {"coefficients": self.coefficients.detach().clone(),
                "locations": self.grid_locations().detach().float()}


@register("loca", family="frequency", paper=PAPER)
class LoCA(Variant):
    summary = ("Like FourierFT, learn a few coefficients of ΔW's spectrum, but in the cosine (DCT) basis and at "
               "locations that move: a finite-difference gradient on the frequency grid shifts each coefficient "
               "toward where the loss wants energy, then the locations freeze and only the coefficients train.")
    formula = r"$\Delta W = \alpha\, C_{out}^\top\, S(a, \ell)\, C_{in},\quad S$ sparse with learned locations $\ell$"
    Config = LoCAConfig
    Layer = LoCALayer
    dynamic = True
    allocation = "spectral locations"  # not ranks: ΔW stays full rank, the locations move
    example_config = {"n": 64, "loc_lr": 1e-2}
    notes = ("Finite differences on ∂L/∂S (α·DCT of ∂L/∂ΔW) and the 10/20-step alternation from step 0, as in the "
             "official layer; an index moves ≈ loc_lr·(d−1) cells per location step, so the small-task presets raise "
             "loc_lr; the 6% warmup of the paper's runs is not part of the variant (our loop has none).")
    presets = tuple(  # the same small-layer values on both synthetic and digits tasks
        Preset(task, config={"loc_lr": 1e-2, "search_fraction": 0.5},
               reason="loc_lr 1e-2, search 50%: one grid cell is 1/(d−1) of a location's range, and the "
                      "paper's 1e-4 in 20 search steps (sized for 768-wide layers) moves under 6% of them")
        for task in ("synthetic:*", "digits:*"))

    @classmethod
    def estimate_bytes(cls, cfg: LoCAConfig, shapes: dict[str, tuple[int, int]]) -> int:
        """Peak bytes of building the adapter on ``shapes`` (out, in), read by ``memory.adaptation_bytes``: the DCT
        basis goes through NumPy, so the layers cannot be built on ``meta`` to be counted. What every layer keeps,
        plus the largest build temporary of one layer (temporaries are freed before the next layer is built)."""
        sizes = [build_bytes(cfg, o, i) for o, i in shapes.values()]
        return sum(kept for kept, _ in sizes) + max((peak - kept for kept, peak in sizes), default=0)

    def param_groups(self, adaptation, lr, weight_decay):
        layers = [layer for _, layer in adaptation.named_layers()]
        for layer in layers:  # step 0 (0 % 30 < 10) trains the coefficients only
            layer.locations.requires_grad_(False)
        return [{"params": [l.coefficients for l in layers], "lr": lr, "weight_decay": weight_decay},
                {"params": [l.locations for l in layers], "lr": self.config.loc_lr, "weight_decay": 0.0,
                 "name": "locations"}]

    def search_steps(self, total_steps: int) -> int:
        return int(self.config.search_fraction * total_steps)

    def locations_turn(self, step: int, total_steps: int) -> bool:
        """Whether ``step`` (0-based) trains the locations: the official ``_advance_schedule``, whose first 30-step
        cycle starts at step 0 (coefficients at ``step % 30 < 10``, locations at ``>= 10``) while searching."""
        return step < self.search_steps(total_steps) and step % CYCLE >= COEF_STEPS

    def on_step(self, ctx):
        """Set which tensors the *next* step trains (step 0 is set in ``param_groups``: coefficients)."""
        adaptation = ctx.adaptation
        locations_turn = self.locations_turn(ctx.step + 1, ctx.total_steps)
        for _, layer in adaptation.named_layers():
            layer.locations.requires_grad_(locations_turn)
            layer.coefficients.requires_grad_(not locations_turn)
            if not locations_turn:
                layer.locations.grad = None
            else:
                layer.coefficients.grad = None
