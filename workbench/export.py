"""Export adapters to PEFT's LoRA format, and merged checkpoints.

PEFT's interchange format is ``adapter_model.safetensors`` with ``base_model.model.<module>.lora_A.weight`` [r, in]
and ``.lora_B.weight`` [out, r] (DoRA adds ``.lora_magnitude_vector``) plus ``adapter_config.json``.

* ``lora``/``rslora``/``dora`` export as they are.
* ``pissa`` exports relative to the *original* W0, as PEFT's ``path_initial_model_for_weight_conversion`` does:
  W_res + s·B A − W0 = s·(B A − B0 A0), a LoRA of rank 2r with A' = [A; A0] and B' = [B, −B0].
* Any other variant with a linear ΔW exports as the rank-``r`` truncated SVD of its ΔW: exact when
  rank(ΔW) ≤ r, the best rank-r approximation (Eckart–Young) otherwise; the relative error is returned.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .adapt import Adaptation
from .errors import ConfigError

__all__ = ["export_peft", "save_merged"]


def _factors_for_peft(ad: Adaptation, rank: int | None) -> tuple[dict, dict, float]:
    """Per module (A, B, magnitude or None), the shared LoRA settings, and the worst relative error."""
    name = ad.variant.name
    out, worst = {}, 0.0
    for module, layer in ad.named_layers():
        with torch.no_grad():
            if name in ("lora", "rslora", "dora"):
                out[module] = (layer.lora_A, layer.lora_B, getattr(layer, "magnitude", None))
            elif name == "pissa":
                a = torch.cat([layer.lora_A, layer.init_A], 0)
                b = torch.cat([layer.lora_B, -layer.init_B], 1)
                out[module] = (a, b, None)
            elif layer.linear_delta and layer.has_weight:
                delta = layer.delta_weight()
                r = rank or min(delta.shape)
                u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
                b, a = u[:, :r] * s[:r], vh[:r]
                err = (torch.linalg.matrix_norm(delta - b @ a) / torch.linalg.matrix_norm(delta).clamp_min(1e-12))
                worst = max(worst, float(err))
                out[module] = (a, b, None)
            else:
                raise ConfigError(f"export: {name} has no linear ΔW (linear_delta=False); use save_merged instead")
    cfg = ad.config
    if name in ("lora", "rslora", "dora"):
        settings = {"r": cfg.r, "lora_alpha": cfg.alpha, "use_rslora": name == "rslora", "use_dora": name == "dora"}
    elif name == "pissa":
        settings = {"r": 2 * cfg.r, "lora_alpha": 2 * cfg.alpha, "use_rslora": False, "use_dora": False}
    else:
        r = next(iter(out.values()))[0].shape[0]
        settings = {"r": r, "lora_alpha": float(r), "use_rslora": False, "use_dora": False}  # scale 1: B A = ΔW
    return out, settings, worst


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
    save_file(state, str(path / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": None, "target_modules": ad.module_names, "lora_dropout": 0.0,
              "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, **settings}
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
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
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / "model.safetensors"))
    finally:
        ad.unmerge()
    return path / "model.safetensors"
