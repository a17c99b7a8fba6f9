"""Export adapters to PEFT's LoRA format, and merged checkpoints.

PEFT's interchange format is ``adapter_model.safetensors`` with ``base_model.model.<module>.lora_A.weight`` [r, in]
and ``.lora_B.weight`` [out, r] (DoRA adds ``.lora_magnitude_vector``) plus ``adapter_config.json``.

* A variant with a native PEFT form says so itself: :meth:`Variant.peft_settings` gives the config fields and each
  layer's :meth:`VariantLayer.peft_factors` its tensors (LoRA, rsLoRA and DoRA as they are; PiSSA relative to the
  original W0, as a rank-2r LoRA).
* Any other variant with a linear ΔW exports as the rank-``r`` truncated SVD of its ΔW at scale 1: exact when
  rank(ΔW) ≤ r, the best rank-r approximation (Eckart–Young) otherwise; the relative error is returned. ΔW is the
  layer's ``update()``, the change from the original W0 (PEFT loads the adapter onto the untouched base model): for
  QWHA that includes the quantisation error its base carries, so the export is of the full-precision equivalent.

This module names no variant: adding a method never means editing it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .adapt import Adaptation
from .errors import ConfigError
from .io import atomic_save_safetensors, atomic_write_json

__all__ = ["export_peft", "save_merged"]


def _native_factors(ad: Adaptation, settings: dict) -> tuple[dict, dict, float]:
    """Per module the layer's own PEFT tensors, under the variant's settings; exact, so the error is 0."""
    out = {}
    for module, layer in ad.named_layers():
        with torch.no_grad():
            factors = layer.peft_factors()
        if factors is None:
            raise ConfigError(f"export: {ad.variant.name} declares peft_settings() but its layer {module} "
                              f"({type(layer).__name__}) returns no peft_factors()")
        out[module] = factors
    return out, dict(settings), 0.0


def _svd_factors(ad: Adaptation, rank: int | None) -> tuple[dict, dict, float]:
    """Per module the rank-``rank`` truncated SVD of ΔW as (A, B, None) at scale 1, and the worst relative error."""
    out, worst = {}, 0.0
    for module, layer in ad.named_layers():
        if not (layer.linear_delta and layer.has_weight):
            raise ConfigError(f"export: {ad.variant.name} has no linear ΔW (linear_delta=False); use save_merged "
                              "instead")
        with torch.no_grad():
            delta = layer.update()  # relative to the original W0: the adapter loads onto the untouched model
            r = rank or min(delta.shape)
            u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
            b, a = u[:, :r] * s[:r], vh[:r]
            err = (torch.linalg.matrix_norm(delta - b @ a) / torch.linalg.matrix_norm(delta).clamp_min(1e-12))
        worst = max(worst, float(err))
        out[module] = (a, b, None)
    r = next(iter(out.values()))[0].shape[0]
    settings = {"r": r, "lora_alpha": float(r), "use_rslora": False, "use_dora": False}  # scale 1: B A = ΔW
    return out, settings, worst


def _factors_for_peft(ad: Adaptation, rank: int | None) -> tuple[dict, dict, float]:
    """Per module (A, B, magnitude or None), the shared LoRA settings, and the worst relative error."""
    settings = ad.variant.peft_settings(ad.config)
    return _native_factors(ad, settings) if settings is not None else _svd_factors(ad, rank)


def export_peft(ad: Adaptation, path: str | Path, *, rank: int | None = None) -> dict:
    """Write ``ad`` as a PEFT LoRA adapter folder; returns ``{"path", "r", "relative_error"}``."""
    tensors, settings, err = _factors_for_peft(ad, rank)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    for module, (a, b, mag) in tensors.items():
        prefix = f"base_model.model.{module}"
        state[f"{prefix}.lora_A.weight"] = a.detach().contiguous().cpu()
        state[f"{prefix}.lora_B.weight"] = b.detach().contiguous().cpu()
        if mag is not None:
            state[f"{prefix}.lora_magnitude_vector"] = mag.detach().contiguous().cpu()
    atomic_save_safetensors(state, path / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "task_type": None, "target_modules": ad.module_names, "lora_dropout": 0.0,
              "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, **settings}
    atomic_write_json(path / "adapter_config.json", config)
    return {"path": str(path), "r": settings["r"], "relative_error": err}


def save_merged(ad: Adaptation, path: str | Path) -> Path:
    """The adapted model with every update folded in, as one ``model.safetensors`` (then unmerged again)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ad.merge()
    try:
        adapted = [m + "." for m in ad.module_names]
        state = {k: v for k, v in ad.model.state_dict().items() if not k.startswith(tuple(adapted))}
        for module, layer in ad.named_layers():  # each adapted layer as the plain nn.Linear it replaces
            state[f"{module}.weight"] = layer.base.weight
            if layer.base.bias is not None:
                state[f"{module}.bias"] = layer.base.bias
        atomic_save_safetensors(state, path / "model.safetensors")
    finally:
        ad.unmerge()
    return path / "model.safetensors"
