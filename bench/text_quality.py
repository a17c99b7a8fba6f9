"""Validation accuracy of each variant on text:sst2 (all-MiniLM-L6-v2, the full SST-2 training file, dev.tsv).

Every variant runs at its defaults, as ``wb.train("text:sst2", variant)`` gives them: the task's training defaults
(``TextTask.defaults``: steps, lr, schedule, batch size, evaluation cadence), the variant's preset for the task
where it declares one (``--no-presets``: the paper's config values alone), the task's default targets and its head
trained in full beside the adapter (``train_head=True``), over a few seeds. The table gives the validation accuracy
as mean ± std over the seeds, the accuracy of the probe-initialised head before training (the same for every
variant), the trainable parameters (adapter + head) and the wall seconds of one ``train()`` call.

    python bench/text_quality.py --data-dir /work/shared/data/sst2
    python bench/text_quality.py --variants lora dora --seeds 0 1 --steps 100 --csv out.csv

Takes about a minute per run on two CPU cores (8 variants x 3 seeds: ~25 minutes).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time

import torch

import workbench as wb

VARIANTS = ["lora", "dora", "pissa", "vera", "fourierft", "loca", "randlora", "adalora"]
COLUMNS = ["variant", "seeds", "accuracy_mean", "accuracy_std", "init_accuracy", "trainable_params",
           "seconds_per_run", "accuracies"]


def run_one(task, variant: str, seed: int, steps: int | None, presets: bool) -> dict:
    settings = {"seed": seed} | ({"steps": steps} if steps else {})
    start = time.perf_counter()
    run = wb.train(task, variant, settings=settings, probes=None, progress=False, presets=presets)
    seconds = time.perf_counter() - start
    s = run.summary
    return {"status": s["status"], "accuracy": s["metric_value"], "init": s["init_metric_value"],
            "params": s["trainable_params"], "seconds": seconds}


def summarize(variant: str, runs: list[dict]) -> dict:
    acc = [r["accuracy"] for r in runs if r["accuracy"] is not None]
    return {"variant": variant, "seeds": len(runs),
            "accuracy_mean": statistics.fmean(acc) if acc else float("nan"),
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "init_accuracy": runs[0]["init"], "trainable_params": runs[0]["params"],
            "seconds_per_run": statistics.fmean(r["seconds"] for r in runs),
            "accuracies": " ".join(f"{a:.4f}" for a in acc)}


def table(rows: list[dict]) -> str:
    lines = [f"{'variant':<10} {'accuracy':>16} {'init':>6} {'params':>9} {'s/run':>7}"]
    for r in rows:
        lines.append(f"{r['variant']:<10} {r['accuracy_mean']:>8.4f} ± {r['accuracy_std']:.4f} "
                     f"{r['init_accuracy']:>6.4f} {r['trainable_params']:>9,d} {r['seconds_per_run']:>7.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the task's, 300)")
    p.add_argument("--data-dir", default=os.environ.get("WORKBENCH_DATA_DIR_SST2", "/work/shared/data/sst2"),
                   help="folder with train.tsv and dev.tsv")
    p.add_argument("--no-presets", dest="presets", action="store_false",
                   help="ignore the variants' presets for text:sst2 (the paper's config values alone)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    args = p.parse_args(argv)

    task = wb.tasks.get("text:sst2", data_dir=args.data_dir)
    print(f"text:sst2, {torch.get_num_threads()} threads, settings {task.defaults}"
          + (f" (steps {args.steps})" if args.steps else ""), flush=True)
    rows = []
    for variant in args.variants:
        runs = []
        for seed in args.seeds:
            r = run_one(task, variant, seed, args.steps, args.presets)
            acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            print(f"  {variant} seed {seed}: accuracy {acc} ({r['status']}, {r['seconds']:.0f} s)", flush=True)
            runs.append(r)
        rows.append(summarize(variant, runs))
    print(table(rows), flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
