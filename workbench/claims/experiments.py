"""The registered experiments of the claims ledger: ``fn(claim, seed, **options) -> {"a": x_a, "b": x_b}``.

Most claims train each arm once per seed and read a statistic from the run (:mod:`workbench.claims.statistics`).
Some do not fit that shape: a sequence of stages merged in turn (CoDyRA), a generator fitted on many runs and
compared with the stored checkpoints (ICM-LoRA), two updates trained apart and composed (Litschko et al.), a
computation with no training at all (Hu et al.'s computational limits), a whole tuned study (He et al.). Such a
claim names an experiment (``Claim.experiment``); :func:`workbench.claims.runner.run_claim` calls it once per seed,
and it returns the value of every arm for that seed (one call, so work both arms share, such as a collection of
checkpoints, is done once).

Each experiment is a thin reader of a library function that the matching ``bench/`` script also calls, so the
bench's table and the claim's verdict come from one implementation. The arms' ``config`` and ``settings`` are what
the experiment reads for each arm; ``claim.task``, ``claim.task_options`` and ``claim.settings`` what they share.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import ConfigError

__all__ = ["register_experiment", "get_experiment", "experiment_names", "EXPERIMENTS", "composition_claim"]

EXPERIMENTS: dict[str, tuple[Callable[..., dict[str, float]], str]] = {}


def register_experiment(name: str, help: str = ""):
    """Register ``fn(claim, seed, **options) -> {arm key: value}`` as ``name`` (a later registration replaces it)."""
    def wrap(fn):
        EXPERIMENTS[name] = (fn, help or (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return wrap


def get_experiment(name: str) -> Callable[..., dict[str, float]]:
    if name not in EXPERIMENTS:
        raise ConfigError(f"claim: experiment={name!r} is invalid; experiment must be one of "
                          f"{', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name][0]


def experiment_names() -> list[str]:
    return sorted(EXPERIMENTS)


def run_experiment(claim, seed: int) -> dict[str, float]:
    """The claim's experiment at ``seed``: one float per arm (NaN where an arm's value is missing)."""
    out = get_experiment(claim.experiment)(claim, seed, **claim.experiment_options)
    missing = sorted(set(claim.arms) - set(out))
    if missing:
        raise ConfigError(f"claim {claim.name}: experiment {claim.experiment!r} returned no value for arms {missing}")
    return {k: float(out[k]) if out[k] is not None else math.nan for k in claim.arms}


# ------------------------------------------------------------------------------------------------ the experiments


@register_experiment("continual-forgetting")
def continual_forgetting(claim, seed: int, stage_key: str = "own", split: str = "test") -> dict[str, float]:
    """The drop in first-stage accuracy over a continual sequence: each arm's variant trained on the claim task's
    stages in turn, merged after each (:func:`workbench.variants.rank.codyra.train_continual`, as in
    ``bench/continual_digits.py``); the value is accuracy on stage 0 right after stage 0 minus after the last stage
    (``stage_key="own"``: among the stage's own classes, task-incremental; ``""``: over all ten classes)."""
    from .. import tasks as task_registry
    from ..variants.rank.codyra import train_continual

    stages = task_registry.get(claim.task, **claim.task_options).stages()
    key = f"accuracy/{stages[0].current}" + (f"/{stage_key}" if stage_key else "")
    out = {}
    for k, arm in claim.arms.items():
        s = {**claim.settings, **arm.settings}
        rows = train_continual(stages, arm.variant, steps=int(s["steps"]), lr=float(s["lr"]), seed=seed,
                               split=split, **arm.config)
        out[k] = float(rows[key].iloc[0] - rows[key].iloc[-1])
    return out


@register_experiment("icm-lora-held-out")
def icm_lora_held_out(claim, seed: int, column: str = "recon_dw", family: str = "synthetic", steps: int = 200,
                      gen_steps: int = 1500) -> dict[str, float]:
    """ICM-LoRA at held-out conditions (:func:`workbench.generate.heldout.held_out_comparison`, one seed of
    ``bench/icm_lora.py``): per arm, the mean over the held-out conditions of ``column`` for the method its
    ``config["method"]`` names (``generated``, ``nearest``, ``interpolated``, ...)."""
    from ..generate.heldout import held_out_comparison

    opts = {k: v for k, v in claim.task_options.items() if k in ("dim", "rank", "path")}
    rows, _ = held_out_comparison(seed, family, steps=steps, gen_steps=gen_steps, **opts)
    out = {}
    for k, arm in claim.arms.items():
        vals = [r[column] for r in rows if r["method"] == arm.config["method"]]
        if not vals:
            raise ConfigError(f"claim {claim.name}: arm {k} method={arm.config['method']!r} is invalid; method must "
                              f"be one of {', '.join(sorted({r['method'] for r in rows}))}")
        out[k] = sum(vals) / len(vals)
    return out


#: the composition experiment in words, shared by the adapter and the SFT claims
COMPOSITION = ("digits (workbench.transfer, as bench/composition.py): base ViT pretrained on upright digits 0-4; "
               "a domain update learned on rotated 0-4 (head frozen) and a task update on upright 0-9 (head "
               "trained), 150 steps each; ten-way accuracy on held-out rotated digits 5-9, which neither saw. b is, "
               "per seed, the better of the two updates alone (zero-shot transfer with one update); the paper's "
               "setting is cross-lingual retrieval with mBERT")


def composition_claim(method: str, statement: str, how: str):
    """The claim of Litschko, Vulić & Glavaš (COLING 2022) for ``method`` (``"adapter"`` or ``"sft"``): the
    composition of a domain and a task update beats the better of the two alone on the target neither saw
    (the ``composition-transfer`` experiment); ``how`` says how ``method`` composes, for the note."""
    from .claim import Arm, Claim

    return Claim(name=f"{method}-composition-beats-zero-shot-transfer", variant=method, statement=statement,
                 source="Litschko, Vulić & Glavaš, COLING 2022, §3-5, Tables 2-3", task="",
                 arms={"a": Arm(method, {"models": ["domain + task (composed)"]}, label=f"{method} composed"),
                       "b": Arm(method, {"models": ["domain alone", "task alone"]},
                                label=f"{method} best single update")},
                 experiment="composition-transfer", experiment_options={"method": method, "steps": 150},
                 direction="greater", note=f"{COMPOSITION}. {how}")


@register_experiment("composition-transfer")
def composition_transfer(claim, seed: int, method: str = "adapter", steps: int = 150,
                         column: str = "target (rot 5-9)") -> dict[str, float]:
    """Zero-shot transfer by composition (:func:`workbench.transfer.run_one`, one seed of
    ``bench/composition.py``, without its upper-bound run): per arm, the best ``column`` among the models its
    ``config["models"]`` lists (e.g. the composition; or the better of the two single updates, per seed)."""
    from ..transfer import run_one

    rows = {r["model"]: r for r in run_one(method, seed, steps, target=False)}
    out = {}
    for k, arm in claim.arms.items():
        unknown = sorted(set(arm.config["models"]) - set(rows))
        if unknown:
            raise ConfigError(f"claim {claim.name}: arm {k} models={unknown} is invalid; models must be among "
                              f"{', '.join(map(repr, rows))}")
        out[k] = max(rows[m][column] for m in arm.config["models"])
    return out


@register_experiment("attention-polynomial-error")
def attention_polynomial_error(claim, seed: int, seq_len: int = 1024, degree: int = 4) -> dict[str, float]:
    """The fixed-degree polynomial's error on exp(QKᵀ/d) with entries bounded by each arm's Γ =
    ``config["gamma_factor"]`` · √(ln L) (:func:`workbench.probes.limits.taylor_attention_error`; no training, the
    seed draws X, W_Q and W_K)."""
    from ..probes.limits import taylor_attention_error

    return {k: taylor_attention_error(float(arm.config["gamma_factor"]), seq_len=seq_len, degree=degree, seed=seed)
            for k, arm in claim.arms.items()}


@register_experiment("unified-study")
def unified_study(claim, seed: int, budget: int | None = None) -> dict[str, float]:
    """He et al.'s protocol at small scale (:func:`workbench.study.run_study`, the ``tuned`` protocol of
    ``bench/study.py``): every variant any arm lists in ``config["variants"]`` at its own rate, swept on ``val``, at
    the matched trainable ``budget``, with training seed and data seed both ``seed`` (the digits' val/test division
    changes with it), scored on ``test``; per arm, the median of its variants' test metric (a variant with no
    completed run is left out of the median)."""
    import numpy as np

    from ..study import run_study

    names = list(dict.fromkeys(v for arm in claim.arms.values() for v in arm.config["variants"]))
    st = run_study(claim.task, names, protocols=("tuned",), seeds=[seed], data_seeds=[seed], budget=budget,
                   settings=dict(claim.settings), probes=())
    metric = dict(zip(st.summary["variant"], st.summary["metric_value_mean"]))
    out = {}
    for k, arm in claim.arms.items():
        values = [metric[v] for v in arm.config["variants"] if math.isfinite(metric.get(v, math.nan))]
        out[k] = float(np.median(values)) if values else math.nan
    return out
