"""Zero-shot transfer by composition on digits, Litschko, Vulić & Glavaš (COLING 2022) in small: θ = θ0 + φ_domain +
φ_task evaluated on the target pair that neither update saw. ``bench/composition.py`` tabulates it and the claims
ledger's ``composition-transfer`` experiment (:mod:`workbench.claims.experiments`) decides the paper's claim from the
same :func:`run_one`.

The base is the digits ViT pretrained on upright digits 0–4 only (``digits:classes``'s model). Two updates are
learned apart, each from the base:

* **domain**: the rotation (90°), learned on the *source classes* 0–4 rotated (the "language" update: it sees the
  new domain but never the new classes; the head stays frozen);
* **task**: the ten-way task on *upright* digits 0–9 (it sees the new classes 5–9 but never rotated; the head is
  trained in full, ``modules_to_save``).

:func:`~workbench.compose.compose` ``(base, [domain, task])`` puts both on one model (SFT: the sparse differences are
added; adapter: the task adapter is stacked on the domain adapter, MAD-X's Stack) and is evaluated on the
**target** that neither saw: rotated digits 5–9 (ten-way accuracy on held-out digits). Rows: the base (zero-shot),
each update alone, the composition, and (optionally) training on the target domain directly (rotated 0–9, the same
recipe as the task: an upper bound). Also scored: all rotated held-out digits 0–9 and upright 0–9.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .compose import compose
from .errors import ConfigError
from .tasks.base import Task, frozen
from .tasks.digits import _digits, _split, image_batches, pretrained_vit, shift_images
from .variants.modular.adapter import FFN_TARGETS

__all__ = ["BODY", "METHODS", "SubsetTask", "accuracy", "data", "run_one"]

BODY = ["blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"]
#: one budget for both methods: the adapters (reduction factor 2 on both blocks' MLP outputs) train 2·1,072 numbers;
#: SFT keeps as many entries of the body's Linear weights (the head trains in full in both, as LT-SFT's code does)
METHODS = {
    "sft": {"targets": BODY, "config": {"k": 2144, "phase1": 0.5, "l1": 0.1}, "lr": 1e-2},
    "adapter": {"targets": FFN_TARGETS["digits"], "config": {"reduction_factor": 2}, "lr": 1e-2},
}


class SubsetTask(Task):
    """Digits ``(x, y)`` for training and held-out ones for evaluation, on the 0–4 ViT."""

    metric = "accuracy"
    higher_is_better = True

    def __init__(self, name: str, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 head: bool):
        self.name, self.train, self.val = name, train, val
        self.targets = BODY
        self.trainable_modules = ["head"] if head else []

    def model(self) -> nn.Module:
        return frozen(pretrained_vit("digits0-4"))

    def batches(self, split: str = "train", batch_size: int = 32, seed: int = 0) -> Iterator[dict]:
        x, y = self.train if split == "train" else self.val
        yield from image_batches(x, y, train=split == "train", batch_size=batch_size, seed=seed)

    def loss(self, model, batch):
        return nn.functional.cross_entropy(model(batch["images"]), batch["labels"])

    def evaluate(self, model, max_batches=None, split="val"):
        return {"accuracy": accuracy(model, *self.val), "loss": float("nan")}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (its training flag restored)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = float((model(x).argmax(-1) == y).float().mean())
    model.train(was)
    return out


def data():
    """Train and held-out digits (the digits task's fixed split; held-out = everything not trained on)."""
    images, labels = _digits()
    parts = _split(len(images))
    train_idx, held_idx = parts[0], torch.cat(list(parts[1:]))

    def pick(idx, classes, shift):
        keep = torch.isin(labels[idx], torch.tensor(classes))
        return shift_images(images[idx][keep], labels[idx][keep], shift)

    old, new, every = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), tuple(range(10))
    return {
        "domain": pick(train_idx, old, "rotate"),      # rotated source classes
        "task": pick(train_idx, every, "source"),      # upright, all ten classes
        "target_train": pick(train_idx, every, "rotate"),
        "target": pick(held_idx, new, "rotate"),       # rotated new classes: what neither update saw
        "rotated": pick(held_idx, every, "rotate"),
        "task_val": pick(held_idx, every, "source"),
    }


def run_one(method: str, seed: int, steps: int, d: dict | None = None, target: bool = True) -> list[dict]:
    """One method and seed: train the domain and the task update (and, with ``target``, the upper bound trained on
    the target domain) and score each model on the held-out data; one row per model (see the module docstring).
    ``d`` is :func:`data` (built here when not given)."""
    if method not in METHODS:
        raise ConfigError(f"composition: method={method!r} is invalid; method must be one of "
                          f"{', '.join(map(repr, METHODS))}")
    from .train import train

    d = data() if d is None else d
    spec = METHODS[method]
    kw = dict(steps=steps, lr=spec["lr"], batch_size=32, seed=seed, probes=(), progress=False,
              targets=spec["targets"], eval_every=steps, **spec["config"])
    tasks = {"domain": SubsetTask("compose:domain", d["domain"], d["target"], head=False),
             "task": SubsetTask("compose:task", d["task"], d["target"], head=True),
             "target": SubsetTask("compose:target", d["target_train"], d["target"], head=True)}
    if not target:
        del tasks["target"]
    runs = {k: train(t, method, **kw) for k, t in tasks.items()}
    base = tasks["task"].model()
    models = {"base (zero-shot)": base, "domain alone": runs["domain"].adaptation.model,
              "task alone": runs["task"].adaptation.model}
    composed = compose(tasks["task"].model(), [runs["domain"].adaptation, runs["task"].adaptation])
    models["domain + task (composed)"] = composed.model
    if target:
        models["trained on the target"] = runs["target"].adaptation.model
    return [{"method": method, "seed": seed, "model": name, "target (rot 5-9)": accuracy(m, *d["target"]),
             "rotated 0-9": accuracy(m, *d["rotated"]), "upright 0-9": accuracy(m, *d["task_val"]),
             "trainable": (runs["task"].summary["trainable_params"] if name != "base (zero-shot)" else 0)}
            for name, m in models.items()]
