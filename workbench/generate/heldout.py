"""ICM-LoRA's held-out test (Shao et al., IJCAI 2025, §4): LoRAs generated for conditions the generator never saw,
against the stored checkpoints and a LoRA trained there. One seed of ``bench/icm_lora.py`` and of the claims
ledger's ``icm-lora-held-out`` experiment (:mod:`workbench.claims.experiments`), so both read one implementation.

Per seed: a family (its own base weights, data and pair of truths), LoRAs trained at 7 conditions t = 0, 1/6, ..., 1
keeping the last 4 checkpoints of each run (28 in all), a CVAE fitted on them, and 3 held-out conditions between the
trained ones (t = 1/12, 5/12, 9/12); on ``digits-family:rotate`` the angles 0°, 15°, ..., 90° and 7.5°, 37.5°,
67.5°. At each held-out condition the rows compare

* ``generated``        the generator's LoRA at t (z = 0, the prior's mean);
* ``generated (z~N)``  the paper's sampling, z ~ N(0, I);
* ``nearest``          the final LoRA of the nearest trained condition;
* ``interpolated``     factor-wise linear interpolation of the two neighbouring trained LoRAs (A and B);
* ``trained``          a LoRA trained at t itself (same steps, same seed): the reference;
* ``none``             (digits only) the pretrained model at the angle, unadapted.

Columns: the task's metric (synthetic: ``rel_error`` = MSE/Var(y) on validation data, lower is better; digits:
``test_accuracy``), ``dist_truth`` (synthetic: ‖ΔW − ΔW*‖_F / ‖ΔW*‖_F over all layers), ``recon_dw`` and
``recon_params`` (the relative error against the LoRA trained at t, of ΔW and of the flattened parameters) and
``phi_to_trained`` (the subspace similarity φ of ΔW to the trained ΔW, the minimum of the left and right φ at
k = rank, Hu et al. 2021 §7).
"""

from __future__ import annotations

import math
import time

import torch

from ..probes.spectra import subspace_similarities
from .collect import collect
from .generator import fit_generator, generate

__all__ = ["held_out_comparison", "FAMILY", "TRAINED", "HELD_OUT", "DIGITS", "ANGLES", "HELD_OUT_ANGLES"]

FAMILY = "synthetic-family:path"
TRAINED = [i / 6 for i in range(7)]
HELD_OUT = [1 / 12, 5 / 12, 9 / 12]
DIGITS = "digits-family:rotate"
ANGLES = [15.0 * i for i in range(7)]
HELD_OUT_ANGLES = [7.5, 37.5, 67.5]


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in b)
    return math.sqrt(num / sum(float(v.pow(2).sum()) for v in b.values()))


def _phi(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], k: int) -> float:
    return sum(min(subspace_similarities(a[n], b[n], k, k)) for n in b) / len(b)


def _family(family: str, seed: int, steps: int, rank: int, dim: int, path: str) -> dict:
    """What differs between the two families: the task and its options, the conditions, the training settings, the
    name of the condition in the rows and whether a true ΔW exists (the synthetic family's)."""
    if family == "digits":
        return {"task": DIGITS, "options": {"seed": seed}, "trained": ANGLES, "held_out": HELD_OUT_ANGLES,
                "key": "angle", "truth": False,
                "train_kw": {"steps": steps, "lr": 1e-2, "r": rank, "every": 10, "batch_size": 32}}
    return {"task": FAMILY, "trained": TRAINED, "held_out": HELD_OUT, "key": "t", "truth": True,
            "options": {"dim": dim, "rank": rank, "n_train": 1024, "n_val": 256, "seed": seed, "path": path},
            "train_kw": {"steps": steps, "lr": 1e-2, "r": rank, "every": 10}}


def _metrics(task, model, truth: bool) -> dict:
    """The synthetic family's relative error, or the digits' test accuracy (the digits no run selected on)."""
    return {"rel_error": task.evaluate(model)["rel_error"]} if truth else \
        {"test_accuracy": task.evaluate(model, split="test")["accuracy"]}


def held_out_comparison(seed: int, family: str = "synthetic", *, steps: int = 200, gen_steps: int = 1500,
                        dim: int = 16, rank: int = 2, path: str = "rotate") -> tuple[list[dict], dict]:
    """One seed (see the module docstring): collect at the family's trained conditions, fit the CVAE, compare at
    its held-out conditions. Returns the rows (one per held-out condition and method) and a dict of the
    generator's size against the checkpoints it replaces, its reconstruction at the trained conditions and the
    time taken. ``family`` is ``"synthetic"`` (synthetic-family:path, ``dim``, ``rank``, ``path``) or
    ``"digits"`` (digits-family:rotate, LoRA r = ``rank`` on its attention and MLP linears)."""
    from ..errors import ConfigError
    from ..train import train

    if family not in ("synthetic", "digits"):
        raise ConfigError(f"held_out_comparison: family={family!r} is invalid; family must be 'synthetic' or "
                          f"'digits'")
    fam = _family(family, seed, steps, rank, dim, path)
    train_kw = fam["train_kw"]
    t0 = time.perf_counter()
    col = collect(fam["task"], fam["trained"], task_options=fam["options"], keep=4, seed=seed, **train_kw)
    t_collect = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = fit_generator(col, steps=gen_steps, seed=seed)
    t_fit = time.perf_counter() - t0
    rows = []
    for c in fam["held_out"]:
        task = col.task_at(c)
        trained = train(task, "lora", seed=seed, probes=None, progress=False, **train_kw).adaptation
        trained.eval()
        theta_tr, dw_tr = trained.adapter_state(), trained.delta_weights()
        lo, hi = col.neighbours(c)
        w = (c - lo) / (hi - lo)
        s_lo, s_hi = col.final(lo).state, col.final(hi).state
        states = {"generated": g.state(c), "generated (z~N)": g.state(c, sample=True, seed=seed),
                  "nearest": col.final(lo if c - lo <= hi - c else hi).state,
                  "interpolated": {k: (1 - w) * s_lo[k] + w * s_hi[k] for k in s_lo}, "trained": theta_tr}
        if not fam["truth"]:  # the pretrained model at the angle, unadapted
            rows.append({"seed": seed, fam["key"]: c, "method": "none", **_metrics(task, task.model(), False)})
        for method, state in states.items():
            ad = col.adaptation(task.model(), state) if method != "trained" else trained
            ad.eval()
            dw = ad.delta_weights()
            row = {"seed": seed, fam["key"]: c, "method": method, **_metrics(task, ad.model, fam["truth"])}
            if fam["truth"]:
                row["dist_truth"] = _rel(dw, task.reference_delta())
            rows.append({**row, "recon_dw": _rel(dw, dw_tr), "phi_to_trained": _phi(dw, dw_tr, rank),
                         "recon_params": math.sqrt(sum(float((state[k] - theta_tr[k]).pow(2).sum()) for k in state)
                                                   / sum(float(v.pow(2).sum()) for v in theta_tr.values()))})
    # in-distribution: the generator at the trained conditions against their final checkpoints
    recon_in = []
    for c in fam["trained"]:
        task = col.task_at(c)
        ref = col.adaptation(task.model(), col.final(c).state)
        recon_in.append(_rel(generate(g, task.model(), c).delta_weights(), ref.delta_weights()))
    size = {"seed": seed, "generator_numbers": g.num_parameters(), "checkpoint_numbers": col.stored_numbers(),
            "one_lora_numbers": sum(v.numel() for v in col.checkpoints[0].state.values()),
            "checkpoints": len(col.checkpoints), "generator_final_loss": sum(g.history[-50:]) / 50,
            "recon_dw_at_trained": sum(recon_in) / len(recon_in), "collect_s": t_collect, "fit_s": t_fit}
    return rows, size
