"""PEFT export: a saved adapter loads into PEFT and gives the same outputs; merged checkpoints load into the plain
model."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file

import workbench as wb
from workbench.export import export_peft, save_merged

peft = pytest.importorskip("peft")
X = torch.randn(7, 32, generator=torch.Generator().manual_seed(2))


def _trained_like(name, **cfg):
    ad = wb.adapt(tiny_model(), name, ["0", "2"], **cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ad.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return ad


@pytest.mark.parametrize("name", ["lora", "rslora", "dora", "pissa", "full"])
def test_peft_loads_the_export_with_the_same_outputs(name, tmp_path):
    ad = _trained_like(name, **({} if name == "full" else {"r": 4}))
    info = export_peft(ad, tmp_path)
    with torch.no_grad():
        expected = ad.model(X)
    loaded = peft.PeftModel.from_pretrained(tiny_model(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, atol=1e-5, rtol=1e-4)
    assert info["relative_error"] < 1e-5


def test_truncated_export_reports_its_error(tmp_path):
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
