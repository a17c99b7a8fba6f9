"""Atomic writes: a failure mid-write leaves the old file as it was and no temporary file behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file

import workbench as wb
from workbench.io import atomic_save_safetensors, atomic_write, atomic_write_json, atomic_write_text

PACKAGE = Path(wb.__file__).parent


class Boom(Exception):
    pass


def _half_write_then_fail(tmp: str) -> None:
    Path(tmp).write_text("half of the new cont")
    raise Boom


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, error):
    target = tmp_path / "run.json"
    target.write_text("old content")

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half of the new cont")
        raise error

    with pytest.raises(error):
        atomic_write(target, fail)
    assert target.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_a_failure_on_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        atomic_write(tmp_path / "new.txt", _half_write_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_the_wrappers_replace_the_file_whole(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "first")
    atomic_write_text(tmp_path / "a.txt", "zweite Fassung ✓")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "zweite Fassung ✓"
    atomic_write_json(tmp_path / "a.json", {"r": 4, "alpha": 8.0})
    assert json.loads((tmp_path / "a.json").read_text()) == {"r": 4, "alpha": 8.0}
    t = torch.arange(6.0).reshape(2, 3).t()  # non-contiguous, as a transposed view is
    atomic_save_safetensors({"w": t}, tmp_path / "a.safetensors")
    assert torch.equal(load_file(str(tmp_path / "a.safetensors"))["w"], t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors", "a.txt"]


def test_task_caches_keep_their_atomic_save(tmp_path):
    from workbench.tasks.base import atomic_save  # the name the tasks import

    atomic_save({"w": torch.ones(2, requires_grad=True)}, tmp_path / "head.safetensors")
    assert torch.equal(load_file(str(tmp_path / "head.safetensors"))["w"], torch.ones(2))


def test_json_that_cannot_be_serialised_fails_before_touching_the_file(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("{}")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "{}" and len(list(tmp_path.iterdir())) == 1


def test_written_files_get_the_permissions_of_a_plain_write(tmp_path):
    (tmp_path / "plain.txt").write_text("x")  # open(path, "w"): 0o666 minus the umask
    atomic_write_text(tmp_path / "atomic.txt", "x")
    mode = stat.S_IMODE(os.stat(tmp_path / "atomic.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)


def test_a_failed_adapter_save_keeps_the_saved_adapter(tmp_path, monkeypatch):
    ad = wb.adapt(tiny_model(), "lora", ["0", "2"], r=4)
    ad.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 10)
        raise Boom

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with torch.no_grad():
        ad.layer("0").lora_B.add_(1.0)
    with pytest.raises(Boom):
        ad.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_package_has_one_atomic_write():
    """Every rename-into-place goes through workbench/io.py, so the rules above hold for every file we write."""
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if p.name != "io.py" and ("os.replace(" in p.read_text() or "mkstemp(" in p.read_text()))
    assert users == []
