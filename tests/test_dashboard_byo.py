"""The Runs tab's "open an adapter folder" (issue 22) and "generate a LoRA" (issue 21) entries, through their
callbacks (no browser): a LoRA saved by PEFT on the synthetic task's model becomes a stored run whose spectra are
the singular values of PEFT's own merged ΔW, from a folder on the server, an upload of its files or a zip; bad
folders, unsupported PEFT types, a model/adapter mismatch and folders outside the server's limits give messages;
a saved generator is listed, generates a run flagged as generated whose adapter is the library's ``generate``, and a
condition outside its trained range is refused with the library's message in the status box."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import peft
import pytest
import torch

from workbench import generate as gen
from workbench.dashboard import app, byo, jobs
from workbench.dashboard import callbacks as cb
from workbench.errors import ConfigError
from workbench.runs import RunStore
from workbench.tasks.base import restrict_paths

TASK = "synthetic:lowrank"
FAMILY = "synthetic-family:path"
FAMILY_OPTS = {"dim": 8, "rank": 1, "n_train": 256, "n_val": 64}


def finish(job_id: str) -> jobs.Job:
    job = jobs.get(job_id)
    job.thread.join(timeout=60)
    assert job.done, f"job {job_id} did not end within 60 s"
    return job


def peft_lora(folder: Path, task_name: str = TASK, seed: int = 0) -> dict[str, torch.Tensor]:
    """A PEFT LoRA on the task's model, moved away from its init (PEFT starts B at 0) and saved by PEFT; returns
    PEFT's own merged ΔW per module (``merge_and_unload`` minus W0), the reference the spectra must match."""
    model = cb.get_task(task_name).model()
    base = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    pm = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(target_modules=["layers.0", "layers.1"], r=4,
                                                                   lora_alpha=8))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(str(folder))
    merged = pm.merge_and_unload()
    return {n: merged.get_submodule(n).weight.detach() - base[n] for n in ("layers.0", "layers.1")}


@pytest.fixture(scope="module")
def peft_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peft") / "adapter"
    return folder, peft_lora(folder)


def check_imported(root: str, run, truth: dict[str, torch.Tensor], source: str) -> None:
    stored = cb.load_run(root, run.id)
    assert stored.config["source"] == source and stored.config["imported"]["reader"] == "peft"
    assert stored.config["steps"] == 0 and stored.variant == "lora" and stored.task == TASK
    assert cb.modules_of([stored]) == ["layers.0", "layers.1"]
    for module, delta in truth.items():  # the probe's singular values against PEFT's merged ΔW
        sv = stored.snapshot("spectra", "singular_values", module)
        torch.testing.assert_close(sv[:4].float(), torch.linalg.svdvals(delta)[:4], atol=1e-5, rtol=1e-5)
    assert {"spectra", "gradients", "eval"} <= set(stored.metrics.probe)
    assert run.id in [value for _, value in cb.run_options(root)]
    head = cb.inspect_view(root, run.id, 0, "layers.0")[0]
    assert "opened from" in head and "not trained here" in head


# -- open an adapter folder --------------------------------------------------------------------------------------
def test_a_peft_lora_folder_on_the_server_becomes_a_run_with_its_spectra(peft_folder, tmp_path):
    folder, truth = peft_folder
    root = str(tmp_path / "runs")
    job = finish(byo.start_import(TASK, None, str(folder), None, root))
    assert job.error is None, job.error
    run = byo.finished_run(job.id)
    check_imported(root, run, truth, str(folder))
    status = byo.import_status(job.id)
    assert run.id in status and "Inspect" in status
    # the stored adapter restores on the task's model with PEFT's ΔW
    restored = cb.load_run(root, run.id).restore(cb.task_of(run))
    for module, delta in restored.delta_weights().items():
        torch.testing.assert_close(delta, truth[module], atol=1e-5, rtol=1e-5)


def test_an_upload_of_the_files_or_of_a_zip_is_read_and_then_removed(peft_folder, tmp_path):
    folder, truth = peft_folder
    root = str(tmp_path / "runs")
    before = set(Path(byo.tempfile.gettempdir()).glob(byo.UPLOAD_PREFIX + "*"))
    files = [str(folder / "adapter_config.json"), str(folder / "adapter_model.safetensors"), str(folder / "README.md")]
    archive = tmp_path / "adapter-peft.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in files:
            z.write(f, f"nested/{Path(f).name}")
    for upload in (files, [str(archive)]):
        job = finish(byo.start_import(TASK, None, "", upload, root))
        assert job.error is None, job.error
        check_imported(root, byo.finished_run(job.id), truth, "upload: adapter_config.json, adapter_model.safetensors")
    assert set(Path(byo.tempfile.gettempdir()).glob(byo.UPLOAD_PREFIX + "*")) == before  # nothing left behind


def test_a_bad_folder_or_upload_is_refused_with_a_message_before_any_job(tmp_path):
    root = str(tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text("{}")
    (tmp_path / "readme.md").write_text("hi")
    (tmp_path / "broken.zip").write_text("not a zip")
    cases = [((str(tmp_path / "missing"), None), "folder='.*missing' is not a folder on the server"),
             ((str(tmp_path / "empty"), None), "holds neither a PEFT adapter"),
             ((str(tmp_path / "half"), None), "has adapter_config.json but no adapter_model.safetensors"),
             (("", None), "give a folder on the server, or upload"),
             ((str(tmp_path / "empty"), [str(tmp_path / "readme.md")]), "either a folder on the server or an upload"),
             (("", [str(tmp_path / "readme.md")]), "the upload holds no adapter file"),
             (("", [str(tmp_path / "broken.zip")]), "broken.zip is not a zip file")]
    started = len(jobs._JOBS)
    for (folder, upload), message in cases:
        with pytest.raises(ConfigError, match=message):
            byo.start_import(TASK, None, folder, upload, root)
    assert len(jobs._JOBS) == started  # nothing started


def test_an_unsupported_peft_type_and_a_mismatched_model_end_as_a_message(peft_folder, tmp_path):
    folder, _ = peft_folder
    root = str(tmp_path / "runs")
    loha = tmp_path / "loha"
    shutil.copytree(folder, loha)
    config = json.loads((loha / "adapter_config.json").read_text())
    (loha / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LOHA"}))
    form = cb.task_options_form(TASK)
    form.loc[form.field == "dim", "value"] = "32"  # the adapter was saved on the 64-wide model
    for path, task_form, message in ((loha, None, "from_peft: peft_type 'LOHA' is not supported; supported: "),
                                     (folder, form, r"has shape \(4, 64\), the model needs \(4, 32\).*on the model "
                                                    r"of synthetic:lowrank")):
        job = finish(byo.start_import(TASK, task_form, str(path), None, root))
        status = byo.import_status(job.id)
        assert status.startswith("**Could not open the adapter:** ") and "Traceback" not in status
        assert re.search(message, status), status
        assert byo.finished_run(job.id) is None
    assert RunStore(root).list().empty


def test_a_folder_outside_the_servers_folders_is_refused(peft_folder, tmp_path):
    folder, _ = peft_folder
    allowed = tmp_path / "data"
    allowed.mkdir()
    shutil.copytree(folder, allowed / "mine")
    os.symlink(folder, allowed / "link")  # inside by name, outside where it leads
    restrict_paths([allowed])
    for path in (folder, allowed / "link", allowed / ".." / "elsewhere"):
        with pytest.raises(ConfigError, match=r"open adapter: folder=.* must be a folder inside the folders this "
                                              r"server was started with \(" + str(allowed.resolve())):
            byo.server_folder(str(path))
    assert byo.server_folder(str(allowed / "mine")) == allowed / "mine"
    restrict_paths([])  # a server started without --data-dir: no folder at all
    with pytest.raises(ConfigError, match=r"started with \(none\)"):
        byo.server_folder(str(allowed / "mine"))


# -- generate a LoRA -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shelf(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runs"))
    col = gen.collect(FAMILY, [0.2, 0.4, 0.6], task_options=FAMILY_OPTS, keep=2, steps=30, lr=1e-2, r=1, every=10)
    g = gen.fit_generator(col, blocks=2, channels=4, latent=4, embed=4, steps=60)
    gen.save_generator(g, root, "path-rotate")
    return root, g


def test_saved_generators_are_listed_and_named_safely(shelf, tmp_path):
    root, g = shelf
    assert byo.generator_options(root) == [("path-rotate · synthetic-family:path · t ∈ [0.2, 0.6] · 6 checkpoints",
                                            "path-rotate")]
    assert "[0.2, 0.6]" in byo.generator_note(root, "path-rotate") and g.id in byo.generator_note(root, "path-rotate")
    assert "save_generator" in byo.generator_note(str(tmp_path / "empty"), None)
    assert RunStore(root).list().empty  # the generators folder is not a run
    for name in ("../x", "a/b", ""):
        with pytest.raises(ConfigError, match="name=.* is invalid"):
            gen.generator_folder(root, name)
    os.symlink(Path(root) / "generators" / "path-rotate", Path(root) / "generators" / "planted")
    assert [o[1] for o in byo.generator_options(root)] == ["path-rotate"]
    with pytest.raises(ConfigError, match="'planted' is a link"):
        gen.open_generator(root, "planted")
    (Path(root) / "generators" / "planted").unlink()


def test_a_generated_lora_is_stored_as_a_run_flagged_generated(shelf):
    root, g = shelf
    job = finish(byo.start_generation(root, "path-rotate", "0.3"))
    assert job.error is None, job.error
    run = cb.load_run(root, byo.finished_run(job.id).id)
    generated = run.config["generated"]
    assert generated["generator"] == g.id and generated["name"] == "path-rotate"
    assert generated["condition"] == {"t": 0.3} and generated["extrapolated"] is False
    assert run.config["steps"] == 0 and run.config["task_options"]["t"] == 0.3
    assert "generated by" in byo.generation_status(job.id) and run.id in byo.generation_status(job.id)
    assert "generated by `" + g.id in cb.inspect_view(root, run.id, 0, None)[0]
    # the stored adapter is what the library's generate() decodes at t = 0.3, and its spectra are of that ΔW
    task = g.task_at(0.3)
    expected = gen.generate(g, task.model(), 0.3).delta_weights()
    restored = run.restore(task).delta_weights()
    for module, delta in expected.items():
        torch.testing.assert_close(restored[module], delta)
        torch.testing.assert_close(run.snapshot("spectra", "singular_values", module)[:1].float(),
                                   torch.linalg.svdvals(delta)[:1], atol=1e-5, rtol=1e-5)


def test_a_condition_outside_the_trained_range_shows_the_librarys_message(shelf):
    root, g = shelf
    with pytest.raises(ConfigError) as refused:
        g.check_condition(0.9)
    started = len(jobs._JOBS)
    with pytest.raises(ConfigError, match=r"t=0.9 is outside the generator's trained range; t must be a number in "
                                          r"\[0.2, 0.6\]"):
        byo.start_generation(root, "path-rotate", "0.9")
    with pytest.raises(ConfigError, match=r"t='abc' is invalid; t must be a number"):
        byo.start_generation(root, "path-rotate", "abc")
    with pytest.raises(ConfigError, match="choose a saved generator"):
        byo.start_generation(root, None, "0.3")
    assert len(jobs._JOBS) == started
    # in the page the message goes to the entry's status box (the job id is left alone)
    handler = app._starts_job(byo.start_generation, byo.generation_status)
    job_id, status = handler(SimpleNamespace(session_hash="s"), root, "path-rotate", "0.9")
    assert status == f"**Refused:** {refused.value}"
    assert not isinstance(job_id, str)


def test_extrapolating_generates_outside_the_range_and_flags_the_run(shelf):
    root, g = shelf
    job = finish(byo.start_generation(root, "path-rotate", "0.9", True))
    assert job.error is None, job.error
    run = cb.load_run(root, byo.finished_run(job.id).id)
    assert run.config["generated"]["extrapolated"] is True and run.config["generated"]["condition"] == {"t": 0.9}
    assert "flagged as extrapolated" in byo.generation_status(job.id)
    assert "outside the trained range" in cb.inspect_view(root, run.id, 0, None)[0]
