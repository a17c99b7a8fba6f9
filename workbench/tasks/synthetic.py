"""Synthetic teacher-student tasks whose true weight update is known.

The *student* is a frozen MLP of square ``nn.Linear`` layers (``layers.0``, ``layers.1``, ...) with tanh between
them and weights with singular values spread from 1.5 to 0.5, so activations keep unit scale. The *teacher* is the
same network with a known ΔW added to each layer. An adapter trained on the teacher's input/output pairs should
recover ΔW, and ``reference_delta()`` gives the truth for the spectra probe (subspace similarity, relative error).

Structures of the true ΔW:

Every structure but ``mixed`` is scaled to the same energy, ‖ΔW‖_F = strength·√dim/2 (half of W0's).

* ``lowrank``        rank-``rank`` update, equal singular values;
* ``fullrank``       every singular value non-zero, power law σ_i ∝ i^(−decay) (decay 1 by default; 0 is flat);
* ``dct``            ``n_coefficients`` non-zeros in the orthonormal 2-D DCT-II basis: ΔW = C_outᵀ S C_in;
* ``wht``            the same in the Walsh–Hadamard basis (``dim`` a power of two);
* ``sparse``         ``n_coefficients`` non-zero entries of ΔW itself;
* ``lowrank+sparse`` half of each;
* ``mixed``          six layers whose updates have different ranks (``true_ranks()``), one with none at all, so
                     that rank-allocation methods have something to find.

Layouts: ``chain`` (the default) stacks the layers, so an adapter on one layer can partly make up for another's
missing update; ``parallel`` feeds the same input to every layer and concatenates their outputs, so each layer is
judged on its own update alone. Growth-from-rank-1 methods (IncreLoRA) allocate by the truth on ``parallel`` and
not on ``chain``, where the compensating layers score highest (notebook 02).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import scipy.fft
import scipy.linalg
import torch
from torch import nn

from ..errors import ConfigError
from ..memory import check_bytes
from ..options import Options, param
from .base import Batch, Task, check_option, frozen, index_stream

STRUCTURES = ("lowrank", "fullrank", "dct", "wht", "sparse", "lowrank+sparse", "mixed")
MIXED_RANKS = (8, 1, 16, 0, 4, 2)


LAYOUTS = ("chain", "parallel")


class MLP(nn.Module):
    """``depth`` square linear layers: with tanh between them (none after the last), or side by side on the same
    input with their outputs concatenated (``parallel``)."""

    def __init__(self, dim: int, depth: int, parallel: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.parallel = parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            return torch.cat([layer(x) for layer in self.layers], dim=-1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x


def _orthogonal(dim: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    return q * torch.sign(torch.diagonal(r))


def _lowrank(dim: int, rank: int, strength: float, g: torch.Generator) -> torch.Tensor:
    if rank == 0:
        return torch.zeros(dim, dim)
    u = _orthogonal(dim, g)[:, :rank]
    v = _orthogonal(dim, g)[:, :rank]
    return strength * u @ v.t()


def _fullrank(dim: int, strength: float, g: torch.Generator, decay: float = 1.0) -> torch.Tensor:
    s = strength * torch.arange(1, dim + 1, dtype=torch.float32).pow(-decay)
    return _orthogonal(dim, g) @ torch.diag(s) @ _orthogonal(dim, g).t()


def _sparse_coefficients(dim: int, n: int, strength: float, g: torch.Generator) -> torch.Tensor:
    s = torch.zeros(dim * dim)
    idx = torch.randperm(dim * dim, generator=g)[:n]
    signs = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    s[idx] = strength * signs * (0.5 + torch.rand(n, generator=g))
    return s.view(dim, dim)


def _dct(dim: int, n: int, strength: float, g: torch.Generator) -> torch.Tensor:
    coeffs = _sparse_coefficients(dim, n, strength, g).numpy()
    return torch.from_numpy(scipy.fft.idctn(coeffs, norm="ortho")).float()  # C_outᵀ S C_in, orthonormal DCT-II


def _wht(dim: int, n: int, strength: float, g: torch.Generator) -> torch.Tensor:
    h = torch.from_numpy(scipy.linalg.hadamard(dim)).float() / math.sqrt(dim)
    return h @ _sparse_coefficients(dim, n, strength, g) @ h


@dataclass
class SyntheticOptions(Options):
    """The options of every ``synthetic:<structure>`` task (``depth`` and ``n_coefficients`` default by structure)."""

    dim: int = param(64, low=4, high=1024, help="width of every layer (the adapted layers are dim×dim)")
    depth: int | None = param(None, low=1, high=16, help="number of layers (none: 2, or 6 for mixed)")
    rank: int = param(4, low=1, high=1024, help="rank of the true update (lowrank, lowrank+sparse)")
    n_coefficients: int | None = param(None, low=1, high=1024 * 1024,
                                       help="non-zero coefficients of the true update (none: 2·dim)")
    strength: float = param(1.0, low=0.0, high=10.0, help="scale of the true update")
    decay: float = param(1.0, low=0.0, high=10.0, help="power-law exponent of the fullrank spectrum")
    noise: float = param(0.0, low=0.0, high=10.0, help="standard deviation of label noise")
    n_train: int = param(4096, low=64, high=1_000_000, help="training examples")
    n_val: int = param(1024, low=16, high=1_000_000, help="validation examples")
    n_test: int | None = param(None, low=16, high=1_000_000,
                               help="test examples, fresh draws after the others (none: as many as n_val)")
    layout: str = param("chain", choices=LAYOUTS, help="chain: layers in sequence; parallel: side by side on one input")
    seed: int = param(0, low=0, high=2**31 - 1, help="seed of the base weights, the truth and the data")

    @classmethod
    def _kind(cls) -> str:
        return "option"

    @classmethod
    def build(cls, owner: str, structure: str, options: dict) -> SyntheticOptions:
        o = cls.from_kwargs(options, owner)
        min_depth = len(MIXED_RANKS) if structure == "mixed" else 1
        o.depth = o.depth if o.depth is not None else (len(MIXED_RANKS) if structure == "mixed" else 2)
        o.n_coefficients = o.n_coefficients if o.n_coefficients is not None else 2 * o.dim
        o.n_test = o.n_test if o.n_test is not None else o.n_val
        o.validate()
        if structure == "wht" and o.dim & (o.dim - 1):
            raise ConfigError(f"{owner}: dim={o.dim} is invalid; dim must be a power of two for Walsh-Hadamard")
        check_option(owner, "depth", o.depth, min_depth, 16)
        check_option(owner, "rank", o.rank, 1, o.dim)
        # lowrank+sparse gives half of the coefficients to its sparse part: one alone would leave it empty (0/0)
        check_option(owner, "n_coefficients", o.n_coefficients, 2 if structure == "lowrank+sparse" else 1,
                     o.dim * o.dim)
        return o


class SyntheticTask(Task):
    """Teacher-student regression through a frozen MLP; see the module docstring for the structures."""

    metric = "rel_error"
    higher_is_better = False
    targets = ["layers.*"]
    option_class = SyntheticOptions  # the declaration behind options(): ranges for validation, forms and the CLI
    # a 64-wide regression converges in a few hundred steps at 1e-2; eval five times a run
    defaults = {"steps": 200, "lr": 1e-2, "batch_size": 32, "every": 10, "eval_every": 40}

    def __init__(self, structure: str = "lowrank", **options):
        name = f"synthetic:{structure}"
        check_option(name, "structure", structure, choices=STRUCTURES)
        o = SyntheticOptions.build(name, structure, options)
        check_bytes(name, self.estimate_bytes(o), {k: getattr(o, k) for k in ("dim", "depth", "n_train", "n_val",
                                                                               "layout")}, "its weights and data")
        dim, depth, rank, n_coefficients = o.dim, o.depth, o.rank, o.n_coefficients
        strength, decay, noise, n_train, n_val, layout, seed = (o.strength, o.decay, o.noise, o.n_train, o.n_val,
                                                                o.layout, o.seed)
        self.name, self.structure = name, structure
        self._options = {"dim": dim, "depth": depth, "rank": rank, "n_coefficients": n_coefficients,
                         "strength": strength, "decay": decay, "noise": noise, "n_train": n_train, "n_val": n_val,
                         "n_test": o.n_test, "layout": layout, "seed": seed}
        g = torch.Generator().manual_seed(seed)
        # a spread spectrum (1.5 → 0.5) keeps activations at unit scale and makes W0's singular vectors unique,
        # which intruder-dimension counts need (an orthogonal W0 has every basis as singular vectors)
        spectrum = torch.linspace(1.5, 0.5, dim)
        self._base = {f"layers.{i}": _orthogonal(dim, g) @ torch.diag(spectrum) @ _orthogonal(dim, g).t()
                      for i in range(depth)}
        self._bias = {n: 0.1 * torch.randn(dim, generator=g) for n in self._base}
        self._deltas = {n: self._scaled(self._make_delta(i, g)) for i, n in enumerate(self._base)}
        teacher = self.model()
        with torch.no_grad():
            for n, d in self._deltas.items():
                teacher.get_submodule(n).weight.add_(d)
            x = torch.randn(n_train + n_val, dim, generator=g)
            y = teacher(x)
            y = y + noise * torch.randn(y.shape, generator=g)
            # the test split: fresh draws from the same stream, after everything train and val use, so adding it
            # left both unchanged (issue 19: selection on val, reporting on test)
            x_test = torch.randn(o.n_test, dim, generator=g)
            y_test = teacher(x_test)
            y_test = y_test + noise * torch.randn(y_test.shape, generator=g)
        self._x = {"train": x[:n_train], "val": x[n_train:], "test": x_test}
        self._y = {"train": y[:n_train], "val": y[n_train:], "test": y_test}
        self._y_vars = {s: float(self._y[s].var()) for s in ("val", "test")}
        self._y_var = self._y_vars["val"]

    @staticmethod
    def estimate_bytes(o: SyntheticOptions) -> int:
        """Float32 bytes the task holds at its peak while building, from the options alone: base weights, true
        updates and the teacher (3·depth·dim²), and the inputs, targets, their noise and the teacher's
        intermediate activations ((n_train + n_val)·dim·(3 + 3·outputs), outputs = depth side by side)."""
        outputs = o.depth if o.layout == "parallel" else 1
        n = o.n_train + o.n_val + (o.n_test if o.n_test is not None else o.n_val)
        return 4 * (3 * o.depth * o.dim * o.dim + n * o.dim * (3 + 3 * outputs))

    def _scaled(self, delta: torch.Tensor) -> torch.Tensor:
        """Every structure gets the same energy, ‖ΔW‖_F = strength·√dim / 2 (half of W0's), so tasks are equally
        hard at init; ``mixed`` keeps equal singular values instead, so its higher-rank layers carry more."""
        if self.structure == "mixed" or delta.abs().max() == 0:
            return delta
        target = self._options["strength"] * math.sqrt(self._options["dim"]) / 2
        return delta * (target / torch.linalg.matrix_norm(delta))

    def _make_delta(self, i: int, g: torch.Generator) -> torch.Tensor:
        o, dim, s = self._options, self._options["dim"], self._options["strength"]
        n = o["n_coefficients"]
        if self.structure == "lowrank":
            return _lowrank(dim, o["rank"], s, g)
        if self.structure == "fullrank":
            return _fullrank(dim, s, g, o["decay"])
        if self.structure == "dct":
            return _dct(dim, n, s, g)
        if self.structure == "wht":
            return _wht(dim, n, s, g)
        if self.structure == "sparse":
            return _sparse_coefficients(dim, n, s, g)
        if self.structure == "lowrank+sparse":
            low, sparse = _lowrank(dim, o["rank"], 1.0, g), _sparse_coefficients(dim, n // 2, 1.0, g)
            return low / torch.linalg.matrix_norm(low) + sparse / torch.linalg.matrix_norm(sparse)
        return _lowrank(dim, MIXED_RANKS[i] if i < len(MIXED_RANKS) else 0, s, g)  # mixed

    # -- the Task protocol ------------------------------------------------------------------------------------
    def model(self) -> nn.Module:
        dim, depth = self._options["dim"], self._options["depth"]
        m = MLP(dim, depth, parallel=self._options["layout"] == "parallel")
        with torch.no_grad():
            for n, w in self._base.items():
                m.get_submodule(n).weight.copy_(w)
                m.get_submodule(n).bias.copy_(self._bias[n])
        return frozen(m)

    def batches(self, split: str = "train", batch_size: int = 32, seed: int = 0) -> Iterator[Batch]:
        check_option(self.name, "split", split, choices=("train", "val", "test"))
        x, y = self._x[split], self._y[split]
        if split == "train":
            for idx in index_stream(len(x), batch_size, seed):
                yield {"x": x[idx], "y": y[idx]}
        else:
            for i in range(0, len(x), batch_size):
                yield {"x": x[i:i + batch_size], "y": y[i:i + batch_size]}

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return nn.functional.mse_loss(model(batch["x"]), batch["y"])

    def evaluate(self, model: nn.Module, max_batches: int | None = None, split: str = "val") -> dict[str, float]:
        """Loss and relative error (MSE / Var(y) of the split) on ``split`` ("val" selects, "test" reports)."""
        check_option(self.name, "split", split, choices=("val", "test"))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                device = next(model.parameters()).device
                pred = model(self._x[split].to(device))
                loss = float(nn.functional.mse_loss(pred, self._y[split].to(device)))
        finally:
            model.train(was_training)
        return {"loss": loss, "rel_error": loss / self._y_vars[split]}

    def reference_delta(self) -> dict[str, torch.Tensor]:
        return {n: d.clone() for n, d in self._deltas.items()}

    def true_ranks(self) -> dict[str, int]:
        """Numerical rank of each layer's true ΔW (for rank-allocation checks on ``mixed``)."""
        return {n: int(torch.linalg.matrix_rank(d)) if d.abs().max() > 0 else 0 for n, d in self._deltas.items()}

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def describe(self) -> str:
        o = self._options
        what = {"lowrank": f"a rank-{o['rank']} update",
                "fullrank": f"a full-rank update with a power-law spectrum (σᵢ ∝ i^-{o['decay']:g})",
                "dct": f"an update with {o['n_coefficients']} non-zero 2-D DCT coefficients",
                "wht": f"an update with {o['n_coefficients']} non-zero Walsh–Hadamard coefficients",
                "sparse": f"an update with {o['n_coefficients']} non-zero entries",
                "lowrank+sparse": f"a rank-{o['rank']} plus a sparse update",
                "mixed": f"updates of different ranks per layer ({', '.join(map(str, MIXED_RANKS))})"}[self.structure]
        net = (f"a frozen {o['depth']}-layer MLP ({o['dim']}×{o['dim']} linears, tanh between)"
               if o["layout"] == "chain" else
               f"{o['depth']} frozen {o['dim']}×{o['dim']} linears side by side on the same input")
        return (f"**{self.name}**: {net}. "
                f"The teacher adds {what} to each layer; the adapter must recover it from input/output pairs. "
                f"Metric: relative error (MSE / Var(y)), 0 is perfect. The true ΔW is known, so spectra and "
                f"subspace similarity are measured against it.")

