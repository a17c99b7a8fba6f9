"""A family of digits tasks whose condition is a rotation angle, for LoRA generators (ICM-LoRA, issue 21).

``digits-family:rotate`` is ``digits:rotate`` (the same tiny ViT pretrained on upright digits, the same targets, the
same train/val/test division for a data ``seed``: the machinery of :mod:`workbench.tasks.digits`, imported, not
copied) with the 90° turn replaced by a turn of ``angle`` degrees, counter-clockwise like ``torch.rot90``. Two
members with the same seed differ only in the angle, so LoRAs trained at some angles form a family a generator can
be conditioned on; the condition (:attr:`DigitsFamilyTask.condition`) is ``angle``, which
:func:`workbench.generate.collect` reads from the task class.

Identities (tested): ``angle=90`` is ``digits:rotate`` exactly (same tensors), ``angle=0`` is the upright
source domain, and every angle shares the pretrained model. ``angle`` must lie in [0, 180]; a generator refuses a
condition outside the range its collection was trained on (``extrapolate=True`` generates anyway and flags it).

The rotation resamples the 8×8 image bilinearly about its centre (pixel centres at ±0.5 … ±3.5): output pixel p
reads the input at R(−angle)·p, zero outside the image (the digits' background). Coordinates within 1e-6 of a pixel
centre are snapped to it, so multiples of 90° are exact permutations and 0° is the identity. Corners of the square
leave the image at intermediate angles; the digits sit inside the inscribed circle, so little ink is lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..options import Options, param
from .base import check_option
from .digits import DigitsTask, _digits, _held_out, _split

KINDS = ("rotate",)
#: the task option that moves a task along the family (what a generator is conditioned on)
CONDITION = "angle"
ANGLE_RANGE = (0.0, 180.0)
SIDE = 8


@dataclass
class DigitsFamilyOptions(Options):
    """The options of ``digits-family:rotate``."""

    angle: float = param(90.0, low=ANGLE_RANGE[0], high=ANGLE_RANGE[1],
                         help="rotation in degrees, counter-clockwise (90: digits:rotate, 0: upright)")
    seed: int = param(0, low=0, high=2**31 - 1,
                      help="data seed: which held-out digits validate and which test (0: the fixed division)")

    @classmethod
    def _kind(cls) -> str:
        return "option"


def rotation_matrix(angle: float) -> torch.Tensor:
    """The (64, 64) bilinear resampling matrix M with ``rotated.flatten() == M @ image.flatten()`` (see the module
    docstring: inverse mapping about the centre, zero outside, snapped to pixel centres within 1e-6)."""
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    half = (SIDE - 1) / 2
    m = torch.zeros(SIDE * SIDE, SIDE * SIDE, dtype=torch.float64)
    for i in range(SIDE):
        for j in range(SIDE):
            y, x = i - half, j - half
            si, sj = y * cos + x * sin + half, x * cos - y * sin + half
            si, sj = (round(si) if abs(si - round(si)) < 1e-6 else si), (round(sj) if abs(sj - round(sj)) < 1e-6
                                                                          else sj)
            i0, j0 = math.floor(si), math.floor(sj)
            for di, wi in ((0, 1 - (si - i0)), (1, si - i0)):
                for dj, wj in ((0, 1 - (sj - j0)), (1, sj - j0)):
                    r, c = i0 + di, j0 + dj
                    if wi * wj > 0 and 0 <= r < SIDE and 0 <= c < SIDE:
                        m[i * SIDE + j, r * SIDE + c] += wi * wj
    return m.float()


def rotate_images(images: torch.Tensor, angle: float) -> torch.Tensor:
    """``images`` (n, 8, 8) turned ``angle`` degrees counter-clockwise (``torch.rot90``'s sense at 90)."""
    n = images.shape[0]
    return (images.reshape(n, -1) @ rotation_matrix(angle).t()).reshape(n, SIDE, SIDE).contiguous()


class DigitsFamilyTask(DigitsTask):
    """``digits:rotate`` at a rotation of ``angle`` degrees; see the module docstring."""

    option_class = DigitsFamilyOptions
    condition = CONDITION

    def __init__(self, kind: str = "rotate", **options):
        name = f"digits-family:{kind}"
        check_option(name, "kind", kind, choices=KINDS)
        o = DigitsFamilyOptions.from_kwargs(options, name)
        o.validate()
        super().__init__("rotate", seed=o.seed)  # the model, targets, splits and evaluation of digits:rotate
        self.name, self.kind, self._angle = name, kind, float(o.angle)
        images, labels = _digits()
        train_idx, held_idx = _split(len(images))
        val_idx, test_idx = _held_out(held_idx, o.seed)
        self._data = {split: (rotate_images(images[idx], self._angle), labels[idx])
                      for split, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}

    @property
    def angle(self) -> float:
        return self._angle

    def options(self) -> dict[str, Any]:
        return {**super().options(), "angle": self._angle}

    def describe(self) -> str:
        return (f"**{self.name}** (angle = {self._angle:g}°): a tiny ViT (2 blocks, width 32, 16 patches of 2×2) "
                f"pretrained on upright scikit-learn digits, adapted to digits turned {self._angle:g}° "
                f"counter-clockwise (bilinear; 90° is digits:rotate). Every angle shares the model and the data "
                f"division, so LoRAs at different angles form a family. Metric: accuracy (validation digits select, "
                f"test digits report).")
