"""Probes: cheap functions of an Adaptation that the training loop runs every k steps.

A :class:`Probe` returns :class:`ProbeResult` records ``(module, key, value)`` (into ``run.metrics``) and small
array snapshots ``(module, name) -> tensor`` (into ``run.snapshots``). ``before_step`` runs after the backward pass
and before gradient clipping (gradients are populated and are the ones the loss produced), ``after_step`` after the
optimizer step and the variant's ``on_step``, with the adaptation in eval mode.
The landscape is not a per-step probe: see :func:`workbench.probes.landscape.landscape`.

A probe observes and never changes the run: a probe that runs a forward pass of its own does it inside
:func:`~workbench.probes.base.isolated_rng`, so that a run with any probe ends in bit-identically the adapter state of
the same run without it (``tests/test_probes_faithfulness.py``, with dropout on).

What the probes cannot see: adaptation wraps only ``nn.Linear`` layers (``VariantLayer`` refuses anything else), so
convolutions and GPT-2's ``Conv1D`` (a linear layer stored transposed, (in, out)) cannot be adapted and no probe reads
them; a model built from them needs its layers converted to ``nn.Linear`` first. Every ΔW, G and map here is in the
(out, in) layout of ``nn.Linear.weight``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ..errors import ConfigError
from .base import Probe, ProbeContext, ProbeResult
from .frequency import FrequencyProbe
from .gradients import GradientsProbe
from .limits import LimitsProbe
from .ranks import RanksProbe
from .spectra import SpectraProbe

__all__ = ["Probe", "ProbeContext", "ProbeResult", "get_probes", "probe_names", "PROBES"]

PROBES: dict[str, type[Probe]] = {p.name: p for p in (SpectraProbe, FrequencyProbe, RanksProbe, GradientsProbe,
                                                   LimitsProbe)}


def probe_names() -> list[str]:
    return list(PROBES)


def get_probes(spec: str | Iterable[str] | None) -> list[Probe]:
    """``"default"``, ``"all"``, a list of names, or ``None``/``()`` for none."""
    if spec is None:
        return []
    if spec == "default":
        return [cls() for cls in PROBES.values() if cls.default]
    if spec == "all":
        return [cls() for cls in PROBES.values()]
    names = [spec] if isinstance(spec, str) else list(spec)
    out = []
    for n in names:
        if n not in PROBES:
            hint = difflib.get_close_matches(n, list(PROBES), n=2)
            raise ConfigError(f"unknown probe {n!r}" + (f"; did you mean {', '.join(hint)}?" if hint else "")
                              + f" Known: {', '.join(PROBES)}, or 'default' / 'all'.")
        out.append(PROBES[n]())
    return out
