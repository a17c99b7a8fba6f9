"""The fair-comparison study (issue 19): each variant under one shared rate and under its own rate tuned on val,
at a matched trainable-parameter budget, n seeds each, reported on the test split with 95 % t-intervals and the
variants indistinguishable from the best marked (Welch's t-test, alpha 0.05).

    python bench/study.py                                   # digits:rotate and text:sst2, the full study (slow)
    python bench/study.py --tasks digits:rotate --variants lora dora vera --seeds 3 --steps 60   # a small one
    python bench/study.py --data-seeds 0 1 2                # the data's spread too (digits: val/test divisions)
    python bench/study.py --executor ray --address auto     # on a Ray cluster (pip install -e '.[scale]')

Writes ``<out>/<task>.csv`` (the summary, with its notes as ``#`` lines) and ``<out>/<task>-pareto-*.html``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from workbench import figures
from workbench.study import export_csv, run_study

TASKS = ("digits:rotate", "text:sst2")
VARIANTS = ("lora", "dora", "pissa", "vera", "fourierft", "loca", "randlora", "adalora")
#: the matched budget per task: LoRA r = 4 on every target (digits: 4 linears × 2 blocks; sst2: its default targets)
BUDGETS = {"digits:rotate": 7_168, "text:sst2": None}
COLUMNS = ["protocol", "variant", "lr", "n", "metric_value_mean", "metric_value_std", "metric_value_ci_low",
           "metric_value_ci_high", "indistinguishable", "p_vs_best", "trainable_params_mean", "seconds_per_step_mean"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--data-seeds", type=int, nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the task's)")
    ap.add_argument("--budget", type=int, default=None, help="trainable parameters (default: per task)")
    ap.add_argument("--executor", default="local", choices=("local", "ray"))
    ap.add_argument("--address", default=None, help="a Ray cluster's address (executor=ray)")
    ap.add_argument("--out", default="out/study", help="where the CSV and figures go (out/ is git-ignored)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.tasks:
        started = time.perf_counter()
        budget = args.budget if args.budget is not None else BUDGETS.get(name)
        st = run_study(name, args.variants, seeds=args.seeds, data_seeds=args.data_seeds, steps=args.steps,
                       budget=budget, executor=args.executor, address=args.address, probes=())
        s = st.summary
        slug = name.replace(":", "-")
        export_csv(s, out / f"{slug}.csv")
        for cost in ("params", "time", "memory"):
            figures.pareto(s, cost).write_html(out / f"{slug}-pareto-{cost}.html", include_plotlyjs="directory")
        took = time.perf_counter() - started
        print(f"\n{name}: {s.attrs.get('split')} split, rates chosen on val; spread: {s.attrs.get('spread')}; "
              f"budget {budget}; {len(st.table)} rows from {st.table.run_id.nunique()} runs in {took:.0f} s")
        print(s[[c for c in COLUMNS if c in s.columns]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(pd.Series(st.summary.attrs).to_string())


if __name__ == "__main__":
    main()
