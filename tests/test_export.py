"""PEFT export: a saved adapter loads into PEFT and gives the same outputs; merged checkpoints load into the plain
model."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file

import workbench as wb
import workbench.export
from workbench.export import export_peft, save_merged

X = torch.randn(7, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def peft():
    return pytest.importorskip("peft")


def _trained_like(name, **cfg):
    ad = wb.adapt(tiny_model(), name, ["0", "2"], **cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ad.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return ad


@pytest.mark.parametrize("name", ["lora", "rslora", "dora", "pissa", "full"])
def test_peft_loads_the_export_with_the_same_outputs(name, tmp_path, peft):
    ad = _trained_like(name, **({} if name == "full" else {"r": 4}))
    info = export_peft(ad, tmp_path)
    with torch.no_grad():
        expected = ad.model(X)
    loaded = peft.PeftModel.from_pretrained(tiny_model(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, atol=1e-5, rtol=1e-4)
    assert info["relative_error"] < 1e-5


def test_a_rebased_variant_exports_its_change_from_the_original_weight(tmp_path, peft):
    """QWHA's base is the quantised W0: PEFT loads the adapter onto the untouched full-precision model, so the export
    is W_Q + F H⁻¹ − W0 (at full rank, exact). Before, it exported F H⁻¹ alone and the loaded model missed the
    quantisation error its base carries."""
    ad = _trained_like("qwha", r=2, bits=3, group_size=16, calib_batches=0)
    info = export_peft(ad, tmp_path)
    with torch.no_grad():
        expected = ad.model(X)
    loaded = peft.PeftModel.from_pretrained(tiny_model(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, atol=1e-5, rtol=1e-4)
    assert info["relative_error"] < 1e-5


def test_truncated_export_reports_its_error(tmp_path, peft):
    ad = _trained_like("full")
    info = export_peft(ad, tmp_path, rank=2)
    assert info["r"] == 2 and 0.1 < info["relative_error"] < 1


def test_merged_checkpoint_loads_into_the_plain_model(tmp_path):
    ad = _trained_like("dora", r=4)
    with torch.no_grad():
        expected = ad.model(X)
    path = save_merged(ad, tmp_path)
    plain = tiny_model()
    plain.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        torch.testing.assert_close(plain(X), expected, atol=1e-5, rtol=1e-4)


# layers that inherit LoRALayer's peft_factors() but not the variant's peft_settings(): exported through the SVD
@pytest.mark.parametrize("name", ["lora-squeeze", "diffora", "comp-lora", "adalora"])
def test_variants_without_peft_settings_export_their_delta_exactly(name, tmp_path, peft):
    ad = _trained_like(name, **wb.get_variant(name).example_config)
    info = export_peft(ad, tmp_path)
    with torch.no_grad():
        expected = ad.model(X)
    loaded = peft.PeftModel.from_pretrained(tiny_model(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, atol=1e-5, rtol=1e-4)
    assert info["relative_error"] < 1e-5


def test_native_peft_forms_are_complete_and_consistent():
    """A variant that declares peft_settings() gets (A [r, in], B [out, r], magnitude iff use_dora) from every layer."""
    native = [info.name for info in wb.variant_infos() if info.cls.peft_settings(info.cls.Config()) is not None]
    assert {"lora", "rslora", "dora", "pissa"} <= set(native)
    for name in native:
        ad = wb.adapt(tiny_model(), name, ["0", "2"], **wb.get_variant(name).example_config)
        settings = ad.variant.peft_settings(ad.config)
        for module, layer in ad.named_layers():
            factors = layer.peft_factors()
            assert factors is not None, f"{name}: {module} has no peft_factors()"
            a, b, magnitude = factors
            assert a.shape == (settings["r"], layer.in_features) and b.shape == (layer.out_features, settings["r"])
            assert (magnitude is not None) == settings["use_dora"], name


def test_a_variant_without_native_peft_form_is_refused_when_nonlinear(tmp_path):
    ad = wb.adapt(tiny_model(), "tlora", ["0", "2"], **wb.get_variant("tlora").example_config)
    with pytest.raises(wb.ConfigError, match="tlora has no linear"):
        export_peft(ad, tmp_path)


def test_export_names_no_variant():
    """Variants own their export (peft_settings/peft_factors): export.py holds no registered name as a literal."""
    names = {info.name for info in wb.variant_infos()}
    tree = ast.parse(inspect.getsource(workbench.export))
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not literals & names, f"export.py branches on variant names: {sorted(literals & names)}"
