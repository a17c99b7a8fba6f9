"""A family of synthetic tasks whose true ΔW moves along a known path, for LoRA generators (ICM-LoRA).

``synthetic-family:path`` is ``synthetic:lowrank`` (same frozen MLP, same data, same seeds: the machinery of
:mod:`workbench.tasks.synthetic`, imported, not copied) with one change: each layer's true update is a point
ΔW*(t) on a path between two rank-``rank`` truths, t ∈ [0, 1] an option. Two tasks of the family with the same
seed differ only in t, so a generator trained on LoRAs at some t can be checked against the truth at any other.

Paths (each layer draws its own pair of orthonormal bases U = [U0 U1], V = [V0 V1], blocks of ``rank`` columns):

* ``rotate`` (default): ΔW*(t) = E/√r · U(t) V(t)ᵀ with U(t) = U0 cos θ + U1 sin θ, V(t) likewise, θ = t·π/2.
  The column spaces turn from span(U0) to span(U1) (a geodesic on the Grassmannian); the rank stays ``rank`` and
  ‖ΔW*(t)‖_F = E for every t, so the task is equally hard along the path and a rank-``rank`` LoRA can fit it.
* ``interpolate``: ΔW*(t) = (1 − t)·D0 + t·D1 with D0 = E/√r · U0 V0ᵀ, D1 = E/√r · U1 V1ᵀ. A straight line in
  weight space: rank 2·``rank`` inside (0, 1), and ‖ΔW*(t)‖ dips to E/√2 at t = ½; a rank-``rank`` LoRA fits only
  the ends exactly.

E = strength·√dim / 2, the energy every ``synthetic:*`` structure has. ``rank`` ≤ dim/2 (two disjoint blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..options import Options, param
from .base import check_option
from .synthetic import SyntheticOptions, SyntheticTask, _orthogonal

PATHS = ("rotate", "interpolate")
KINDS = ("path",)
#: the task option that moves a task along the family (what a generator is conditioned on)
CONDITION = "t"


@dataclass
class FamilyOptions(Options):
    """The options ``synthetic-family:path`` adds to those of ``synthetic:lowrank``."""

    t: float = param(0.0, low=0.0, high=1.0, help="position on the path between the two low-rank truths")
    path: str = param("rotate", choices=PATHS, help="rotate: turn the subspaces (rank fixed); interpolate: a line")

    @classmethod
    def _kind(cls) -> str:
        return "option"


@dataclass
class _AllFamilyOptions(SyntheticOptions):
    """Every option of the family (for forms, the CLI and ``tasks.option_names``): the synthetic ones and ours."""

    t: float = param(0.0, low=0.0, high=1.0, help="position on the path between the two low-rank truths")
    path: str = param("rotate", choices=PATHS, help="rotate: turn the subspaces (rank fixed); interpolate: a line")


class FamilyTask(SyntheticTask):
    """``synthetic:lowrank`` whose true ΔW is the point ΔW*(t) of a known path; see the module docstring."""

    option_class = _AllFamilyOptions

    def __init__(self, kind: str = "path", **options):
        name = f"synthetic-family:{kind}"
        check_option(name, "kind", kind, choices=KINDS)
        ours = {k: options.pop(k) for k in FamilyOptions.field_names() if k in options}
        fo = FamilyOptions.from_kwargs(ours, name)
        fo.validate()
        self._t, self._path = float(fo.t), fo.path
        rank, dim = options.get("rank", 4), options.get("dim", 64)
        if isinstance(rank, int) and isinstance(dim, int) and 2 * rank > dim:
            raise ConfigError(f"{name}: rank={rank} is invalid; rank must be an integer in [1, {dim // 2}] "
                              f"(two disjoint rank-{rank} truths must fit in dim={dim})")
        super().__init__("lowrank", **options)  # builds the truth through _make_delta below
        self.name, self.kind = name, kind

    # the two truths are drawn from the task's generator in the same order for every t, so the base weights, the
    # data and both ends of the path are identical across the family; only the point on the path moves
    def _make_delta(self, i: int, g: torch.Generator) -> torch.Tensor:
        dim, r = self._options["dim"], self._options["rank"]
        energy = self._options["strength"] * math.sqrt(dim) / 2
        qu, qv = _orthogonal(dim, g), _orthogonal(dim, g)
        u0, u1, v0, v1 = qu[:, :r], qu[:, r:2 * r], qv[:, :r], qv[:, r:2 * r]
        if self._path == "rotate":
            theta = self._t * math.pi / 2
            u, v = u0 * math.cos(theta) + u1 * math.sin(theta), v0 * math.cos(theta) + v1 * math.sin(theta)
            return energy / math.sqrt(r) * u @ v.t()
        return energy / math.sqrt(r) * ((1 - self._t) * u0 @ v0.t() + self._t * u1 @ v1.t())

    def _scaled(self, delta: torch.Tensor) -> torch.Tensor:
        return delta  # the path sets its own scale (interpolation's dip in the middle is part of the path)

    @property
    def t(self) -> float:
        return self._t

    def options(self) -> dict[str, Any]:
        return {**super().options(), "t": self._t, "path": self._path}

    def describe(self) -> str:
        o = self._options
        how = ("turns the subspaces of a rank-{r} update by θ = t·π/2" if self._path == "rotate"
               else "blends two orthogonal rank-{r} updates linearly").format(r=o["rank"])
        return (f"**{self.name}** (t = {self._t:g}, path {self._path}): a frozen {o['depth']}-layer MLP "
                f"({o['dim']}×{o['dim']} linears, tanh between). The teacher's update {how}; every t shares the "
                f"base weights and data, so LoRAs at different t form a family. Metric: relative error "
                f"(MSE / Var(y)); the true ΔW*(t) is known.")
