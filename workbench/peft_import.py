"""Import PEFT adapters: ``from_peft(model, path)`` reads a PEFT adapter folder and returns an :class:`Adaptation`.

The folder is what PEFT 0.21's ``save_pretrained`` writes: ``adapter_config.json`` and ``adapter_model.safetensors``
(safetensors only: a pickled ``adapter_model.bin`` is refused, never unpickled). Per-layer tensors are stored as
``base_model.model.<module>.<name>``, tensors shared by every layer (VeRA's and RandLoRA's bases, Uni-LoRA's θ_d)
as ``base_model.<name>``, and each module of ``modules_to_save`` as its own state dict under its name.

Each PEFT type maps onto the workbench variant with the same definition (checked against PEFT's ``PeftModel`` to
1e-5 in ``tests/test_peft_import.py``):

* ``LORA`` -> ``lora``, ``rslora`` (``use_rslora``) or ``dora`` (``use_dora``; with ``use_rslora`` too, the scale
  α/√r is written as DoRA's α/r with α' = α·√r). PiSSA/OLoRA adapters saved with PEFT's
  ``path_initial_model_for_weight_conversion`` are plain LoRAs relative to the original W0 (rank 2r) and import as
  ``lora``; one saved unconverted (``init_lora_weights="pissa"``) imports as ``pissa``, whose exact SVD rebuilds
  PEFT's residual base; ``olora``, randomized ``pissa_niter_k`` and the other data-driven inits need the converted
  form and are refused.
* ``ADALORA`` -> ``adalora`` (r = init_r; the ranks left by the saved ``rank_pattern`` are the tensors' own, and the
  scale stays α/(init_r + 1e-5) as in PEFT, whose ``ranknum`` keeps init_r after a reload).
* ``VERA`` -> ``vera``, ``FOURIERFT`` -> ``fourierft``, ``RANDLORA`` -> ``randlora``, ``UNILORA`` -> ``uni-lora``: the
  frozen bases are regenerated from the saved seeds and replaced by the saved projections where PEFT saved them.

``target_modules`` (a list of names or name suffixes, a regex string matched in full, or ``"all-linear"``, read from
the saved tensors), ``exclude_modules``, ``rank_pattern``/``alpha_pattern`` (LoRA; FourierFT's
``n_frequency_pattern``), ``modules_to_save`` and ``fan_in_fan_out`` are followed as PEFT does. ``fan_in_fan_out``
only changes a GPT-2 ``Conv1D`` (PEFT turns it off for ``nn.Linear``), and ``Conv1D`` cannot be adapted here, so on an
importable model it changes nothing. A layer whose rank or α differs from the config's (a pattern) gets its own copy
of the config (``Adaptation.layer_configs``, which ``save``/``load_adaptation`` carry). Any other option that is not
at its inert default (``lora_bias``, ``bias``, ``layers_to_transform``, dropout on a variant without one, ...) is a
:class:`ConfigError` naming it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .adapt import Adaptation, adapt
from .errors import ConfigError

__all__ = ["from_peft", "SUPPORTED_TYPES"]

LAYER_PREFIX, SHARED_PREFIX = "base_model.model.", "base_model."
#: config keys that describe the file, not the adapter
METADATA = frozenset({"peft_type", "task_type", "peft_version", "auto_mapping", "base_model_name_or_path",
                      "revision", "inference_mode", "megatron_core", "qalora_group_size"})
#: keys every type handles the same way
COMMON = frozenset({"target_modules", "exclude_modules", "modules_to_save", "fan_in_fan_out"})


@dataclass
class Plan:
    """What one PEFT config becomes: a variant, its config, per-module config overrides, and how tensors load."""

    variant: str
    config: dict[str, Any]
    handled: frozenset[str]
    load: Callable[[Adaptation, dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]], None]
    overrides: Callable[[str, dict[str, torch.Tensor]], dict[str, Any]] = lambda name, tensors: {}


def pattern_value(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern key that matches the end of ``module`` as a regex."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _take(tensors: dict[str, torch.Tensor], module: str, *names: str) -> torch.Tensor:
    for n in names:
        if n in tensors:
            return tensors.pop(n)
    raise ConfigError(f"from_peft: adapter_model.safetensors has no {names[0]!r} tensor for module {module!r}")


def _copy(param: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise ConfigError(f"from_peft: {what} has shape {tuple(value.shape)}, the model needs {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(value.to(param.dtype))


def _shared_copy(ad: Adaptation, shared: dict[str, torch.Tensor], key: str, attr: str) -> None:
    """A saved projection replaces the regenerated one (they agree when both come from the same key)."""
    if key in shared:
        _copy(getattr(ad.shared, attr), shared.pop(key).float(), f"the saved projection {key}")


# -------------------------------------------------------------------------------------------------- per type


#: PEFT's ``init_lora_weights`` values whose saved adapter is relative to a base PEFT re-computes on load, and the
#: variant that computes the same base (PiSSA's exact SVD; ``pissa_niter_k`` is randomized, so not reproducible)
REBASING_INITS = {"pissa": "pissa"}


def lora_variant(use_rslora: bool, use_dora: bool) -> str:
    """The first registered variant whose own :meth:`~workbench.variant.Variant.peft_settings` (export's mapping,
    declared by each variant) is a LoRA with these flags at its config's own r and α: the inverse of ``export_peft``
    (PiSSA, which exports at rank 2r, is not one)."""
    from .variant import variant_infos

    for info in variant_infos():
        cfg = info.cls.Config()
        settings = info.cls.peft_settings(cfg)
        if settings is not None and (settings["use_rslora"], settings["use_dora"]) == (use_rslora, use_dora) \
                and settings["r"] == getattr(cfg, "r", None) and settings["lora_alpha"] == getattr(cfg, "alpha", None):
            return info.name
    raise ConfigError(f"from_peft: no variant declares PEFT's LoRA with use_rslora={use_rslora}, use_dora={use_dora}")


def _lora(cfg: dict) -> Plan:
    init = cfg.get("init_lora_weights", True)
    rebased = REBASING_INITS.get(init) if isinstance(init, str) else None
    if isinstance(init, str) and init != "gaussian" and rebased is None:
        raise ConfigError(f"from_peft: init_lora_weights={init!r} is not supported unconverted: that adapter is "
                          "relative to a base PEFT changed at init; save it with save_pretrained(..., "
                          "path_initial_model_for_weight_conversion=...) (a plain LoRA on the original model) and "
                          "import that")
    dora, rs = bool(cfg.get("use_dora")), bool(cfg.get("use_rslora"))
    if rebased and (dora or rs):
        raise ConfigError(f"from_peft: init_lora_weights={init!r} with use_dora or use_rslora is not supported")
    variant = rebased or lora_variant(rs and not dora, dora)  # DoRA + rsLoRA: DoRA with α' = α·√r (below)
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", 8))

    def alpha_for(r_layer: int, a: float) -> float:  # DoRA + rsLoRA: α/√r written as α'/r
        return a * math.sqrt(r_layer) if dora and rs else a

    config = {"r": r, "alpha": alpha_for(r, alpha), "dropout": float(cfg.get("lora_dropout", 0.0))}

    def overrides(module, tensors):
        r_layer = int(pattern_value(cfg.get("rank_pattern"), module, r))
        a_layer = float(pattern_value(cfg.get("alpha_pattern"), module, alpha))
        got = tensors.get("lora_A.weight")
        if got is not None and got.shape[0] != r_layer:
            raise ConfigError(f"from_peft: {module}.lora_A has rank {got.shape[0]}; the config (r, rank_pattern) "
                              f"says {r_layer}")
        out = {"r": r_layer, "alpha": alpha_for(r_layer, a_layer)}
        return {k: v for k, v in out.items() if v != config[k]}

    def load(ad, per_module, shared):
        for name, layer in ad.named_layers():
            t = per_module[name]
            _copy(layer.lora_A, _take(t, name, "lora_A.weight"), f"{name}.lora_A")
            _copy(layer.lora_B, _take(t, name, "lora_B.weight"), f"{name}.lora_B")
            if dora:
                m = _take(t, name, "lora_magnitude_vector", "lora_magnitude_vector.weight")
                _copy(layer.magnitude, m, f"{name}.lora_magnitude_vector")

    handled = {"r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "init_lora_weights", "rank_pattern",
               "alpha_pattern", "bias"}
    return Plan(variant, config, frozenset(handled), load, overrides)


def _adalora(cfg: dict) -> Plan:
    r = int(cfg["init_r"])
    config = {"r": r, "target_r": min(int(cfg["target_r"]), r), "alpha": float(cfg.get("lora_alpha", 8)),
              "tinit": int(cfg["tinit"]), "tfinal": int(cfg["tfinal"]), "delta_t": int(cfg["deltaT"]),
              "beta1": float(cfg["beta1"]), "beta2": float(cfg["beta2"]),
              "orth_reg_weight": float(cfg["orth_reg_weight"])}
    masks = cfg.get("rank_pattern") or {}

    def load(ad, per_module, shared):
        for name, layer in ad.named_layers():
            t = per_module[name]
            a, b, e = (_take(t, name, k) for k in ("lora_A", "lora_B", "lora_E"))
            mask = masks.get(f"{name}.lora_E")
            if mask is not None and sum(map(bool, mask)) != a.shape[0]:
                raise ConfigError(f"from_peft: {name} keeps {a.shape[0]} ranks; its rank_pattern keeps "
                                  f"{sum(map(bool, mask))}")
            if a.shape[0] != layer.r:  # truncated by the saved rank_pattern; the scale keeps init_r (PEFT's ranknum)
                layer.resize(a.shape[0])
            _copy(layer.lora_A, a, f"{name}.lora_A")
            _copy(layer.lora_B, b, f"{name}.lora_B")
            _copy(layer.gate, e.reshape(-1), f"{name}.lora_E")

    handled = {"init_r", "target_r", "lora_alpha", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight",
               "rank_pattern", "r", "total_step", "init_lora_weights", "bias"}
    return Plan("adalora", config, frozenset(handled), load)


def _vera(cfg: dict) -> Plan:
    config = {"r": int(cfg["r"]), "d_initial": float(cfg.get("d_initial", 0.1)),
              "projection_prng_key": int(cfg.get("projection_prng_key", 0)),
              "dropout": float(cfg.get("vera_dropout", 0.0))}

    def load(ad, per_module, shared):
        _shared_copy(ad, shared, "vera_A", "A")
        _shared_copy(ad, shared, "vera_B", "B")
        for name, layer in ad.named_layers():
            _copy(layer.lambda_b, _take(per_module[name], name, "vera_lambda_b"), f"{name}.vera_lambda_b")
            _copy(layer.lambda_d, _take(per_module[name], name, "vera_lambda_d"), f"{name}.vera_lambda_d")

    handled = {"r", "d_initial", "projection_prng_key", "vera_dropout", "save_projection", "init_weights", "bias"}
    return Plan("vera", config, frozenset(handled), load)


def _fourierft(cfg: dict) -> Plan:
    n = int(cfg["n_frequency"])
    config = {"n_frequency": n, "scaling": float(cfg["scaling"]), "random_loc_seed": int(cfg["random_loc_seed"])}

    def overrides(module, tensors):
        n_layer = int(pattern_value(cfg.get("n_frequency_pattern"), module, n))
        return {"n_frequency": n_layer} if n_layer != n else {}

    def load(ad, per_module, shared):
        for name, layer in ad.named_layers():
            _copy(layer.spectrum, _take(per_module[name], name, "fourierft_spectrum"), f"{name}.fourierft_spectrum")

    handled = {"n_frequency", "scaling", "random_loc_seed", "n_frequency_pattern", "init_weights", "bias"}
    return Plan("fourierft", config, frozenset(handled), load, overrides)


def _randlora(cfg: dict) -> Plan:
    config = {"r": int(cfg["r"]), "alpha": float(cfg["randlora_alpha"]),
              "projection_prng_key": int(cfg.get("projection_prng_key", 0))}

    def load(ad, per_module, shared):
        _shared_copy(ad, shared, "randlora_A", "A")
        _shared_copy(ad, shared, "randlora_B", "B")
        for name, layer in ad.named_layers():
            t = per_module[name]
            for k in ("randlora_A", "randlora_B"):  # per-layer views of the shared bases, when saved
                if k in t and not torch.equal(t.pop(k).float(), getattr(ad.shared, k[-1])):
                    raise ConfigError(f"from_peft: {name}.{k} differs from the shared base_model.{k}")
            _copy(layer.lambdas, _take(t, name, "randlora_lambda"), f"{name}.randlora_lambda")
            _copy(layer.gammas, _take(t, name, "randlora_gamma"), f"{name}.randlora_gamma")

    handled = {"r", "randlora_alpha", "projection_prng_key", "save_projection", "init_weights", "bias"}
    return Plan("randlora", config, frozenset(handled), load)


def _unilora(cfg: dict) -> Plan:
    config = {"r": int(cfg["r"]), "d": int(cfg["theta_d_length"]), "proj_seed": int(cfg["proj_seed"]),
              "init_bound": float(cfg.get("init_theta_d_bound", 0.02))}

    def load(ad, per_module, shared):
        _copy(ad.shared.theta, _take(shared, "(shared)", "unilora_theta_d"), "unilora_theta_d")
        for name, layer in ad.named_layers():  # save_indices=True: PEFT's slots and scales replace the regenerated
            for side, where in (("A", layer._a), ("B", layer._b)):
                for key, buffer in (("indices", ad.shared.slots), ("scales", ad.shared.scales)):
                    value = per_module[name].pop(f"unilora_{key}_{side}", None)
                    if value is not None:
                        _copy(buffer[where], value.reshape(-1), f"{name}.unilora_{key}_{side}")  # a view: in place

    handled = {"r", "theta_d_length", "proj_seed", "init_theta_d_bound", "init_weights", "bias", "save_indices"}
    return Plan("uni-lora", config, frozenset(handled), load)


#: PEFT's ``peft_type`` -> the plan builder for it
SUPPORTED_TYPES: dict[str, Callable[[dict], Plan]] = {"LORA": _lora, "ADALORA": _adalora, "VERA": _vera,
                                                      "FOURIERFT": _fourierft, "RANDLORA": _randlora,
                                                      "UNILORA": _unilora}


# ------------------------------------------------------------------------------------------------ the import


def _check_options(cfg: dict, plan: Plan) -> None:
    """Every option this import does not follow must be at an inert (falsy) value; ``bias`` must be ``"none"``."""
    kind = cfg["peft_type"]
    if cfg.get("bias", "none") != "none":
        raise ConfigError(f"from_peft: {kind} bias={cfg['bias']!r} is not supported (only 'none': the workbench "
                          "keeps base biases frozen)")
    for key, value in cfg.items():
        if key in METADATA or key in COMMON or key in plan.handled:
            continue
        if value not in (None, False, 0, 0.0, "", [], {}):
            raise ConfigError(f"from_peft: {kind} option {key}={value!r} is not supported (allowed: its default, "
                              "off/empty)")


def _excluded(cfg: dict, name: str) -> bool:
    ex = cfg.get("exclude_modules")
    if not ex:
        return False
    if isinstance(ex, str):
        return re.fullmatch(ex, name) is not None
    return name in ex or any(name.endswith("." + e) for e in ex)


def peft_targets(model: nn.Module, cfg: dict, saved_modules: set[str]) -> list[str]:
    """The modules PEFT adapts, in model order, by PEFT's rules (``check_target_module_exists``): a list matches a
    name or its last components, a string is a regex matched in full, ``"all-linear"`` is read from the tensors."""
    targets = cfg.get("target_modules")
    if targets is None:
        raise ConfigError("from_peft: target_modules is missing (target_parameters is not supported)")
    keep = cfg.get("modules_to_save") or []
    names = []
    for name, module in model.named_modules():
        if not name or _excluded(cfg, name) or any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in keep):
            continue
        if targets == "all-linear":
            hit = name in saved_modules
        elif isinstance(targets, str):
            hit = re.fullmatch(targets, name) is not None
        else:
            hit = name in targets or any(name.endswith("." + t) for t in targets)
        if hit:
            if not isinstance(module, nn.Linear):
                raise ConfigError(f"from_peft: target {name!r} is a {type(module).__name__}; only nn.Linear layers "
                                  "can be imported (GPT-2's Conv1D, embeddings and convolutions cannot)")
            names.append(name)
    if not names:
        raise ConfigError(f"from_peft: target_modules={targets!r} matches no module of the model "
                          f"({type(model).__name__})")
    return names


def _split(state: dict[str, torch.Tensor], owners: list[str]) -> tuple[dict, dict]:
    """Tensors per owning module (longest name wins) and the shared ones (``base_model.<name>``)."""
    per: dict[str, dict[str, torch.Tensor]] = {n: {} for n in owners}
    shared: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(LAYER_PREFIX):
            rest = key[len(LAYER_PREFIX):]
            owner = max((n for n in owners if rest.startswith(n + ".")), key=len, default=None)
            if owner is None:
                raise ConfigError(f"from_peft: tensor {key!r} belongs to no target module or module to save")
            per[owner][rest[len(owner) + 1:]] = value
        elif key.startswith(SHARED_PREFIX):
            shared[key[len(SHARED_PREFIX):]] = value
        else:
            raise ConfigError(f"from_peft: tensor {key!r} is not under PEFT's 'base_model.' prefix")
    return per, shared


def _saved_module_names(state: dict[str, torch.Tensor]) -> set[str]:
    """Module names that own per-layer tensors (for ``all-linear``): the part before the adapter tensor's name."""
    out = set()
    for key in state:
        if key.startswith(LAYER_PREFIX):
            rest = key[len(LAYER_PREFIX):]
            m = re.match(r"(.+?)\.(lora_|vera_|fourierft_|randlora_)", rest)
            if m:
                out.add(m.group(1))
    return out


def _modules_to_save(model: nn.Module, cfg: dict) -> list[str]:
    """``modules_to_save`` less the head names PEFT adds for a ``task_type`` (``classifier`` and ``score`` for
    SEQ_CLS) that the model does not have; a name the user gave that matches nothing stays, to be refused."""
    wanted = cfg.get("modules_to_save") or []
    if cfg.get("task_type") is None:
        return list(wanted)
    present = [n for n, _ in model.named_modules() if n]
    return [m for m in wanted if any(re.match(rf"(^|.*\.){m}($|\..*)", n) for n in present)]


def read_peft_folder(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``adapter_config.json`` and the tensors of ``adapter_model.safetensors`` (a ``.bin`` is refused)."""
    path = Path(path)
    config_file, tensor_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} is not a PEFT adapter folder (no adapter_config.json)")
    if not tensor_file.exists():
        if (path / "adapter_model.bin").exists():
            raise ConfigError(f"from_peft: {path} holds adapter_model.bin (pickle); only adapter_model.safetensors "
                              "is read. Re-save it with save_pretrained(..., safe_serialization=True)")
        raise FileNotFoundError(f"{path} has no adapter_model.safetensors")
    try:
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"from_peft: {config_file} is not valid JSON ({exc})") from exc
    return cfg, load_file(str(tensor_file))


def from_peft(model: nn.Module, path: str | Path, *, seed: int = 0) -> Adaptation:
    """Adapt ``model`` in place with the PEFT adapter saved in ``path`` and return the :class:`Adaptation`.

    Args:
        model: the base model the adapter was trained on (PEFT's ``base_model.model``), untouched.
        path: a folder written by PEFT's ``save_pretrained`` (``adapter_config.json``, ``adapter_model.safetensors``).
        seed: the adaptation's seed (only draws that the loaded tensors then overwrite depend on it).

    Returns:
        An :class:`Adaptation` of the matching variant whose outputs equal ``PeftModel.from_pretrained``'s.

    Raises:
        ConfigError: an unsupported ``peft_type`` or option, or tensors that do not fit the model.
        FileNotFoundError: ``path`` is not a PEFT adapter folder.
    """
    cfg, state = read_peft_folder(path)
    kind = str(cfg.get("peft_type", "?")).upper()
    if kind not in SUPPORTED_TYPES:
        raise ConfigError(f"from_peft: peft_type {kind!r} is not supported; supported: {', '.join(SUPPORTED_TYPES)}")
    cfg["peft_type"] = kind
    plan = SUPPORTED_TYPES[kind](cfg)
    _check_options(cfg, plan)
    names = peft_targets(model, cfg, _saved_module_names(state))
    ad = adapt(model, plan.variant, ["re:" + re.escape(n) for n in names], seed=seed,
               modules_to_save=_modules_to_save(model, cfg), **plan.config)
    per, shared = _split(state, ad.module_names + ad.modules_to_save)
    for name in ad.module_names:
        changes = plan.overrides(name, per[name])
        if changes:  # its own config, kept by save() as layer_configs
            ad.rebuild_layer(name, changes)
    plan.load(ad, per, shared)
    for name, module in ad.saved_modules():
        try:
            module.load_state_dict(per.pop(name))  # strict: every tensor of the module, no other
        except RuntimeError as exc:
            raise ConfigError(f"from_peft: modules_to_save {name!r} does not match the saved tensors: {exc}") from exc
    left = [f"{n}.{k}" for n, t in per.items() for k in t] + [f"base_model.{k}" for k in shared]
    if left:
        raise ConfigError(f"from_peft: {kind} tensors not understood: {', '.join(sorted(left)[:6])}"
                          + (" ..." if len(left) > 6 else "") + " (e.g. lora_bias, or a different model)")
    return ad
