"""LoRA-Squeeze vs LoRA trained at the target rank directly, on synthetic:fullrank, over seeds.

The paper (Vulić et al., 2026) claims a rank-16 adapter squeezed to rank 4 (plus a short continued training) beats
rank 4 trained from the start. Every row trains the same number of steps; for each step budget the table reports
the final relative error (mean ± std over seeds) and each row's ratio to LoRA r=4. The ``rescale=alpha`` rows show
what LoRA's usual α/r_tgt after the squeeze does to the continued training.

    python bench/lora_squeeze.py [--seeds 3] [--steps 150 600] [--lr 0.01]
"""

from __future__ import annotations

import argparse

import pandas as pd

import workbench as wb

ROWS = {
    "lora r=4 (direct)": ("lora", {"r": 4, "alpha": 4.0}),
    "lora r=16 (reference)": ("lora", {"r": 16, "alpha": 16.0}),
    "squeeze 16→4 post (at 80%, then 20% at r=4)": ("lora-squeeze", {"r": 16, "target_r": 4, "mode": "post"}),
    "squeeze 16→4 post (at 50%)": ("lora-squeeze", {"r": 16, "target_r": 4, "mode": "post", "squeeze_at": 0.5}),
    "squeeze 16→4 in-tuning (halvings)": ("lora-squeeze", {"r": 16, "target_r": 4, "mode": "in"}),
    "squeeze 64→4 post (at 80%)": ("lora-squeeze", {"r": 64, "alpha": 64.0, "target_r": 4, "mode": "post"}),
    "squeeze 16→4 post, rescale=alpha": ("lora-squeeze", {"r": 16, "target_r": 4, "mode": "post", "rescale": "alpha"}),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 600])
    ap.add_argument("--lr", type=float, default=1e-2)
    args = ap.parse_args(argv)
    task = wb.tasks.get("synthetic:fullrank")
    for steps in args.steps:
        rows = []
        for label, (variant, cfg) in ROWS.items():
            for seed in range(args.seeds):
                run = wb.train(task, variant, steps=steps, lr=args.lr, seed=seed, probes=(), progress=False, **cfg)
                rows.append({"setting": label, "seed": seed, "rel_error": run.summary["metric_value"],
                             "final_params": run.summary["trainable_params"]})
        df = pd.DataFrame(rows)
        table = df.groupby("setting", sort=False).agg(rel_error_mean=("rel_error", "mean"),
                                                      rel_error_std=("rel_error", "std"),
                                                      final_params=("final_params", "first"))
        table["ratio_to_lora_r4"] = table.rel_error_mean / table.loc["lora r=4 (direct)", "rel_error_mean"]
        print(f"\nsynthetic:fullrank, {steps} steps, lr {args.lr}, {args.seeds} seeds")
        print(table.to_string(float_format=lambda v: f"{v:.4f}"))

if __name__ == "__main__":
    main()
