"""Where each variant's optimizer step spends its time beyond LoRA's, by operator and by phase (issue 24: the
``bench/step_time.py`` rows above 1.25x the floor are to be "explained with a profile").

The setting of ``bench/step_time.py`` (all-MiniLM-L6-v2 on the CPU, float32, a batch of 16 x 64 tokens, the
query/key/value/attention-output linears adapted, the variant's paper defaults and its own optimizer, built by
``step_time.ours``). Each variant is built twice: once for a timed pass and once for a profiled pass, each with 2
warm-up rounds and then ``--steps`` rounds, the variants round-robin (noise hits all alike), so both passes see the
same step numbers as step_time.py (LoCA's location steps 10 and 11 included). Printed per variant:

* the mean step (``time.perf_counter``, no profiler) and its ratio to LoRA's in the same pass (and the ratio of the
  medians); the median step under the profiler (``torch.profiler``, CPU activities), whose per-operator overhead
  inflates many-op steps a little;
* the excess over LoRA per phase: forward, backward (from the first autograd node on), optimizer (zero_grad and
  ``Optimizer.step``, Python included), on_step (the variant's hook) and python (time in the step outside any op);
* the top 8 (phase, operator) pairs by self CPU time that LoRA lacks or spends less on: the excess in ms per step
  and its share of the variant's profiled excess over LoRA (ops cheaper than LoRA's are left out, so shares may
  add up to more than 100%). Profiled numbers are medians over the steps, so a preempted step does not skew them.

    python bench/profile_step.py                          # lora + the seven rows above the 1.25x target
    python bench/profile_step.py tlora nola --steps 5 --csv out.csv
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))

import step_time  # noqa: E402

DEFAULT = ["lora", "tlora", "randlora", "loca", "increlora", "nola", "fourierft", "fora"]
PHASES = ("forward", "backward", "optimizer", "on_step", "python")
MARK = "step:"  # record_function name around each profiled step
TOP = 8


def build(base, emb, names: list[str]) -> dict:
    return {name: step_time.ours(base, emb, name) for name in names}


def rounds(steps: dict, n: int, warmup: int = 2, on_round=contextlib.nullcontext) -> dict[str, list[float]]:
    """Seconds of each of ``n`` steps per candidate, round-robin after ``warmup`` untimed rounds; ``on_round()``
    (a context manager: a profiler session) wraps each timed round."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times = {k: [] for k in steps}
    for _ in range(n):
        with on_round():
            for k, fn in steps.items():
                with record_function(MARK + k):
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
    return times


def phases_of(children) -> list[tuple[str, object]]:
    """The phase of each top-level event of one step, in order: zero_grad, forward, backward (from the first
    autograd node, hooks included), ``Optimizer.step``, then the variant's on_step."""
    out, phase = [], "forward"
    for ev in sorted(children, key=lambda e: e.time_range.start):
        if ev.name.startswith("Optimizer.zero_grad"):
            out.append(("optimizer", ev))
            continue
        if ev.name.startswith("Optimizer.step"):
            out.append(("optimizer", ev))
            phase = "on_step"
            continue
        if phase == "forward" and ev.name.startswith("autograd::engine"):
            phase = "backward"
        out.append((phase, ev))
    return out


def _self_times(ev, phase: str, row: dict) -> None:
    stack = [ev]
    while stack:
        e = stack.pop()
        row[(phase, e.name)] += e.self_cpu_time_total / 1e3
        stack.extend(e.cpu_children)


class Tally:
    """Per variant and round (one step each), in ms: the profiled step, each phase, each (phase, operator)'s self
    time; read back as medians over the rounds, so a step the scheduler preempted does not skew them."""

    def __init__(self) -> None:
        self.rounds: list[dict] = []  # {variant: {"step" | phase | (phase, op): ms}} per round

    def add(self, events) -> None:
        cur = defaultdict(lambda: defaultdict(float))
        for root in events:
            if root.cpu_parent is not None or not root.name.startswith(MARK):
                continue
            row = cur[root.name[len(MARK):]]
            row["step"] += root.cpu_time_total / 1e3
            row["python"] += root.self_cpu_time_total / 1e3
            for phase, ev in phases_of(root.cpu_children):
                row[phase] += ev.cpu_time_total / 1e3
                _self_times(ev, phase, row)
        self.rounds.append(cur)

    def ms(self, name: str, key) -> float:
        return statistics.median(r.get(name, {}).get(key, 0.0) for r in self.rounds)

    def excess_ops(self, name: str, ref: str = "lora") -> list[tuple[str, str, float, float, float]]:
        """(phase, op, ms, ref ms, excess ms) for every pair that ``ref`` lacks or spends less on, largest first."""
        keys = {k for r in self.rounds for k in r.get(name, {}) if isinstance(k, tuple)}
        rows = [(*k, self.ms(name, k), self.ms(ref, k)) for k in keys]
        return sorted(((*r, r[2] - r[3]) for r in rows if r[2] > r[3]), key=lambda r: -r[4])


@contextlib.contextmanager
def profiled_round(tally: Tally):
    """One profiler session per round, tallied at its end: one round's events at a time in memory."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield
    tally.add(prof.events())


def ms_stats(times: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """(mean, median) milliseconds per step of each candidate."""
    return {k: (statistics.mean(v) * 1e3, statistics.median(v) * 1e3) for k, v in times.items()}


def timed(base, emb, names, n):
    return ms_stats(rounds(build(base, emb, names), n))


def profiled(base, emb, names, n) -> Tally:
    steps, tally = build(base, emb, names), Tally()
    rounds(steps, n, on_round=lambda: profiled_round(tally))
    return tally


def report(names, wall, tally, writer=None) -> None:
    (lora, lora_med), plora = wall["lora"], tally.ms("lora", "step")
    for name in names:
        (ms, med), pms = wall[name], tally.ms(name, "step")
        pex = pms - plora
        print(f"\n{name}: {ms:.1f} ms/step, {ms / lora:.3f}x LoRA (median {med / lora_med:.3f}x, excess "
              f"{ms - lora:+.1f} ms); profiled median {pms:.1f} ms, {pms / plora:.3f}x (excess {pex:+.1f} ms)")
        if writer:
            writer.writerow([name, "step", "", f"{ms:.3f}", f"{lora:.3f}", f"{ms - lora:.3f}", ""])
        if name == "lora":
            print("  " + "  ".join(f"{ph} {tally.ms(name, ph):.1f}" for ph in PHASES) + "  (ms/step, profiled)")
            continue
        deltas = {ph: tally.ms(name, ph) - tally.ms("lora", ph) for ph in PHASES}
        print("  excess by phase: " + "  ".join(f"{ph} {d:+.1f}" for ph, d in deltas.items()))
        print(f"  {'phase':<10}{'operator':<58}{'ms/step':>9}{'lora':>8}{'excess':>8}{'share':>7}")
        for ph, op, op_ms, ref, d in tally.excess_ops(name)[:TOP]:
            share = d / pex if pex > 0 else float("nan")
            shown = f"{share:7.0%}" if pex > 0 else "      -"  # noise made the variant no slower than LoRA
            print(f"  {ph:<10}{op[:57]:<58}{op_ms:9.2f}{ref:8.2f}{d:8.2f}{shown}")
            if writer:
                writer.writerow([name, ph, op, f"{op_ms:.3f}", f"{ref:.3f}", f"{d:.3f}", f"{share:.4f}"])
        if writer:
            for ph, d in deltas.items():
                writer.writerow([name, ph, "(phase)", f"{tally.ms(name, ph):.3f}", f"{tally.ms('lora', ph):.3f}",
                                 f"{d:.3f}", ""])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", help=f"default: {' '.join(DEFAULT)} (lora is always added)")
    ap.add_argument("--steps", type=int, default=10, help="timed and profiled rounds (after 2 warm-up rounds)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--csv", type=Path, help="also write the step, phase and operator rows as CSV")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = ["lora", *[n for n in (args.variants or DEFAULT) if n != "lora"]]
    base = step_time.load_minilm()
    emb = step_time.make_inputs(base)
    wall = timed(base, emb, names, args.steps)
    tally = profiled(base, emb, names, args.steps)
    print(f"all-MiniLM-L6-v2, batch {step_time.BATCH}x{step_time.TOKENS}, {args.threads} threads, float32, "
          f"mean of {args.steps} steps; LoRA {wall['lora'][0]:.1f} ms/step")
    if not args.csv:
        report(names, wall, tally)
        return
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["variant", "phase", "op", "ms", "lora_ms", "excess_ms", "share"])
        report(names, wall, tally, writer)


if __name__ == "__main__":
    main()
