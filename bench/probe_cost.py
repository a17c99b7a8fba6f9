"""What the default probes cost: training time with them at the default cadence against the same run without them.

Rows (issue 24):

* ``minilm``   - the text task (``text:sst2``, all-MiniLM-L6-v2, width 384, every linear layer of the encoder
                 adapted), from the shared SST-2 folder;
* ``bert-<h>`` - a random-weight BERT-like encoder built from a ``transformers.BertConfig`` (no download) with hidden
                 size h (768, 1024, 2048 by default; ``--layers`` layers, 4h-wide feed-forward, h/64 heads), random
                 token batches, a mean-pooled 2-way head, the text task's targets (every linear layer).

Each model trains LoRA (r = 8) twice with the same seed and settings: once with ``probes=None``, once with the
default probes (``get_probes("default")``) at the default cadence: every ``--every`` steps (10) under the default
``probe_budget`` (5% of training time: a probe that costs more skips steps of the cadence, the first and the last
call always made; :mod:`workbench.probes.schedule`). ``--budget none`` measures the fixed cadence instead. The
``calls`` column says how often each probe ran.
``train_s`` is the training time of the run without probes (``seconds_per_step`` × steps, the loop's own time),
``probes_s`` the time spent inside the probes of the probed run (every ``Trainer.probe`` call, measured around it,
one-time work such as the cached SVD of W0 included), ``overhead`` = probes_s / train_s. Target: ≤ 5%.

    python bench/probe_cost.py                          # minilm + bert 768/1024/2048, one thread
    python bench/probe_cost.py --hidden 2048 --csv out.csv --device cuda
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import time
from pathlib import Path

import torch
from torch import nn

import workbench as wb
from workbench.tasks.text import TextClassifier, TextTask
from workbench.train import Trainer

SHARED_SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


class RandomBertTask:
    """Sentence classification on random tokens with a random-weight BERT-like encoder (nothing downloaded)."""

    metric = "loss"
    higher_is_better = False
    targets = TextTask.targets

    def __init__(self, hidden: int, layers: int, batch_tokens: int, seed: int = 0):
        from transformers import BertConfig, BertModel

        self.name = f"bert-{hidden}"
        self.hidden, self.tokens = hidden, batch_tokens
        config = BertConfig(vocab_size=1024, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                            max_position_embeddings=max(512, batch_tokens), hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
        torch.manual_seed(seed)
        self._encoder = BertModel(config, add_pooling_layer=False).eval()
        self._seed = seed

    def options(self) -> dict:
        return {"hidden": self.hidden, "tokens": self.tokens}

    def model(self) -> nn.Module:
        m = TextClassifier(copy.deepcopy(self._encoder), 2)
        for p in m.parameters():
            p.requires_grad_(False)
        return m.eval()

    def _batch(self, g: torch.Generator, batch_size: int) -> dict:
        ids = torch.randint(0, 1024, (batch_size, self.tokens), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": torch.randint(0, 2, (batch_size,), generator=g)}

    def batches(self, split: str = "train", batch_size: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
        while True:
            yield self._batch(g, batch_size)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def evaluate(self, model: nn.Module, max_batches: int | None = None) -> dict:
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in next(self.batches("val", 2)).items()}
        with torch.no_grad():
            return {"loss": float(self.loss(model, batch))}

    def describe(self) -> str:
        return f"random-weight BERT-like encoder, hidden {self.hidden}"


class _ProbeClock:
    """Seconds spent inside ``Trainer.probe`` (every probe's before_step and after_step), synchronised on CUDA."""

    def __init__(self):
        self.seconds = 0.0
        self._original = Trainer.probe

    def __enter__(self):
        clock, original = self, self._original

        def timed(trainer, phase, step, batch):
            if trainer.dev.type == "cuda":
                torch.cuda.synchronize(trainer.dev)
            t0 = time.perf_counter()
            try:
                return original(trainer, phase, step, batch)
            finally:
                if trainer.dev.type == "cuda":
                    torch.cuda.synchronize(trainer.dev)
                clock.seconds += time.perf_counter() - t0

        Trainer.probe = timed
        return self

    def __exit__(self, *exc):
        Trainer.probe = self._original


def measure(task, hidden: int, args) -> dict:
    batch = args.batch or (task.defaults.get("batch_size", 32) if hasattr(task, "defaults") else 16)
    common = dict(steps=args.steps, every=args.every, batch_size=batch, lr=1e-3, seed=0, device=args.device,
                  eval_every=10**6, progress=False, presets=False, config={"r": 8})
    plain = wb.train(task, "lora", probes=None, **common)
    with _ProbeClock() as clock:
        budget = {} if args.budget == "default" else {"probe_budget": args.budget}
        probed = wb.train(task, "lora", probes="default", **budget, **common)
    train_s = plain.summary["seconds_per_step"] * plain.summary["steps_done"]
    return {"model": task.name, "hidden": hidden, "train_s": train_s, "probes_s": clock.seconds,
            "overhead": clock.seconds / max(train_s, 1e-12),
            "calls": " ".join(f"{k[:4]}={v}" for k, v in probed.summary["probe_calls"].items()),
            "probed_seconds_per_step": probed.summary["seconds_per_step"],
            "plain_seconds_per_step": plain.summary["seconds_per_step"]}


def minilm_task(args):
    data_dir = os.environ.get("WORKBENCH_DATA_DIR")
    folder = Path(data_dir) / "sst2" if data_dir else SHARED_SST2
    return wb.tasks.get("text:sst2", data_dir=str(folder), n_val=32, n_probe=256)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, nargs="*", default=[768, 1024, 2048],
                    help="widths of the random BERT-like models")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=32, help="tokens per sequence of the random models")
    ap.add_argument("--batch", type=int, default=None,
                    help="examples per step (default: the text task's own, 32; 16 for the random models)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=10, help="the probe cadence (the default setting: 10)")
    ap.add_argument("--budget", type=lambda v: v if v == "default" else None if v == "none" else float(v),
                    default="default", help="probe_budget (default: the setting's default), or none for the fixed "
                                            "cadence")
    ap.add_argument("--no-minilm", action="store_true", help="skip the MiniLM text-task row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", type=Path, help="write model,hidden,train_s,probes_s,overhead")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    if not args.no_minilm:
        rows.append(measure(minilm_task(args), 384, args))
        _print_row(rows[-1], header=True)
    for h in args.hidden:
        rows.append(measure(RandomBertTask(h, args.layers, args.tokens), h, args))
        _print_row(rows[-1], header=len(rows) == 1)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["model", "hidden", "train_s", "probes_s", "overhead"],
                               extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({**r, "train_s": f"{r['train_s']:.4f}", "probes_s": f"{r['probes_s']:.4f}",
                            "overhead": f"{r['overhead']:.4f}"})


def _print_row(r: dict, header: bool) -> None:
    if header:
        print(f"{'model':<10} {'hidden':>6} {'train_s':>9} {'probes_s':>9} {'overhead':>9}  "
              f"{'s/step plain':>12} {'s/step probed':>13}  calls")
    print(f"{r['model']:<10} {r['hidden']:>6} {r['train_s']:>9.2f} {r['probes_s']:>9.3f} {r['overhead']:>8.1%}  "
          f"{r['plain_seconds_per_step']:>12.4f} {r['probed_seconds_per_step']:>13.4f}  {r['calls']}", flush=True)


if __name__ == "__main__":
    main()
