"""Composition on digits, the reranking paper's transfer setting in small: θ = θ0 + φ_domain + φ_task.

The experiment is :mod:`workbench.transfer` (its docstring gives the design: a domain update learned on rotated
digits 0–4, a task update on upright 0–9, composed and scored on rotated 5–9, which neither saw), the code the
claims ledger's ``composition-transfer`` experiment also runs. Rows: the base (zero-shot), each update alone, the
composition, and training on the target domain directly (an upper bound). Mean ± standard deviation over seeds.

    python bench/composition.py [--steps 150] [--seeds 3] [--csv PATH]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from workbench.transfer import data, run_one


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default="sft,adapter")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    d = data()
    started = time.perf_counter()
    rows = [r for method in args.methods.split(",") for seed in range(args.seeds)
            for r in run_one(method, seed, args.steps, d)]
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    cols = ["target (rot 5-9)", "rotated 0-9", "upright 0-9"]
    g = df.groupby(["method", "model"], sort=False)[cols]
    mean, std = g.mean(), g.std().fillna(0.0)
    table = mean.copy().astype(object)
    for c in cols:
        table[c] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[c], std[c])]
    print(f"digits composition: base ViT pretrained on upright 0-4; {args.steps} steps per update, "
          f"{args.seeds} seeds, held-out accuracy (ten-way); {time.perf_counter() - started:.0f} s")
    print(table.to_string())
    return df


if __name__ == "__main__":
    main()
