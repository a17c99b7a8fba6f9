"""Peak memory of one training step per variant on all-MiniLM-L6-v2, as ratios to LoRA and to PEFT's implementation.

The setting of ``bench/step_time.py`` (a batch of 16 x 64 tokens, the query/key/value/attention-output linears of
every layer adapted, the variant's paper defaults, AdamW): each candidate takes one warm-up step (so AdamW's state
exists) and then one measured step: zero_grad + forward + loss + backward + optimizer step.

* CPU: the storage the step begins with (every parameter and buffer of the model, the adapter's, the optimizer
  state, the inputs: ``workbench.memory.storage_bytes``, views and shared tensors counted once) plus the peak of what
  the step allocates (``workbench.memory.PeakTracker``: every new tensor storage, activations saved for backward and
  gradients included, uncounted when freed). Not process RSS, which keeps whatever any earlier row allocated.
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, synchronised.

Columns: ``peak_mb``; ``added_mb`` = peak - the frozen floor's peak (forward + backward to the input embeddings, no
adapter: what any method pays); ``ratio_to_lora`` and ``ratio_to_peft`` of the added memory (the variant's own
cost: parameters, gradients, optimizer state, extra activations); empty where PEFT has no such method.

    python bench/memory.py                      # every registered variant
    python bench/memory.py lora dora vera --csv out.csv --device cuda
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_time import PEFT_CONFIGS, TARGETS, load_minilm, make_inputs  # noqa: E402

import workbench as wb  # noqa: E402
from workbench import devices  # noqa: E402
from workbench.memory import PeakTracker, storage_bytes  # noqa: E402
from workbench.recipes import get_recipe  # noqa: E402


def _floor(base, emb):
    model = copy.deepcopy(base)

    def step():
        x = emb.detach().requires_grad_(True)
        model(inputs_embeds=x).last_hidden_state.square().mean().backward()

    return model, None, step


def _ours(base, emb, name):
    model = copy.deepcopy(base)
    ad = wb.adapt(model, name, TARGETS)
    ad.train()
    opt = get_recipe(ad.variant.default_recipe)(ad, 1e-4).optimizer
    return model, opt, _adapter_step(model, emb, opt)


def _theirs(base, emb, name):
    import peft

    model = peft.get_peft_model(copy.deepcopy(base), PEFT_CONFIGS[name](peft, 8))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)
    return model, opt, _adapter_step(model, emb, opt)


def _adapter_step(model, emb, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        model(inputs_embeds=emb).last_hidden_state.square().mean().backward()
        opt.step()

    return step


def _held(model, opt, emb) -> int:
    state = [] if opt is None else [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return storage_bytes([*model.parameters(), *model.buffers(), *state, emb])


def peak_bytes(model, opt, step, emb, device: torch.device) -> int:
    """One warm-up step, then the peak of one measured step (see the module docstring)."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    held = _held(model, opt, emb)
    with PeakTracker() as tracker:
        step()
    return held + tracker.peak_bytes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", help="default: every registered variant")
    ap.add_argument("--csv", type=Path, help="also write the table as CSV")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = devices.resolve(args.device)
    names = args.variants or [v.name for v in wb.variant_infos()]
    base = load_minilm().to(device)
    emb = make_inputs(base.cpu()).to(device)
    base = base.to(device)

    def measure(build) -> float:
        model, opt, step = build()
        return peak_bytes(model, opt, step, emb, device) / 2**20

    floor = measure(lambda: _floor(base, emb))
    rows, lora_added = [], None
    print(f"floor (frozen forward + backward): {floor:.1f} MiB")
    print(f"{'variant':<14} {'peak_mb':>9} {'added_mb':>9} {'ratio_to_lora':>13} {'ratio_to_peft':>13}")
    for name in (["lora"] if "lora" not in names else []) + names:
        try:
            peak = measure(lambda n=name: _ours(base, emb, n))
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run here is reported, not fatal
            print(f"{name:<14} failed: {type(exc).__name__}: {exc}")
            continue
        added = peak - floor
        if name == "lora":
            lora_added = added
        peft_added = None
        if name in PEFT_CONFIGS:
            try:
                peft_added = measure(lambda n=name: _theirs(base, emb, n)) - floor
            except ImportError:
                peft_added = None
        row = {"variant": name, "peak_mb": peak, "added_mb": added,
               "ratio_to_lora": added / lora_added if lora_added else None,
               "ratio_to_peft": added / peft_added if peft_added else None}
        if name in names:
            rows.append(row)
            fmt = lambda v: f"{v:>13.2f}" if v is not None else f"{'':>13}"  # noqa: E731
            print(f"{name:<14} {peak:>9.1f} {added:>9.1f} {fmt(row['ratio_to_lora'])} {fmt(row['ratio_to_peft'])}",
                  flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["variant", "peak_mb", "added_mb", "ratio_to_lora", "ratio_to_peft"])
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
