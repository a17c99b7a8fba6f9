"""Devices and precision: ``device="auto"`` picks CUDA, then MPS, then the CPU; ``dtype`` runs the forward and the
loss under autocast with float32 adapter weights; float16 uses a GradScaler (refused on the CPU); the run records the
resolved device and dtype. Everything here runs on the CPU (the CUDA/MPS branches through monkeypatched probes)."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyTask, tiny_model

import workbench as wb
from workbench import devices
from workbench.devices import Precision
from workbench.settings import TrainSettings
from workbench.train import train

FAST = {"steps": 30, "lr": 3e-2, "batch_size": 16, "every": 10, "progress": False, "probes": None}


def _availability(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"),
                                               (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _availability(monkeypatch, cuda, mps)
    assert devices.resolve("auto") == torch.device(expected)


def test_auto_is_the_cpu_on_this_machine_and_train_records_it():
    assert not torch.cuda.is_available()  # the test machine (and CI) has no GPU
    if not torch.backends.mps.is_available():
        assert devices.resolve("auto") == torch.device("cpu")
    run = train(TinyTask(), "lora", r=2, **{**FAST, "steps": 3})
    assert TrainSettings().device == "auto" and run.config["settings"]["device"] == "auto"  # asked
    assert run.config["device"] == run.summary["device"] == str(devices.resolve("auto"))  # resolved
    assert run.config["dtype"] == run.summary["dtype"] == "float32"


@pytest.mark.parametrize("bad", ["tpu", "gpu", "cuda:x", "CPU", "cuda:0:1", ""])
def test_bad_device_names_are_config_errors_naming_the_forms(bad):
    with pytest.raises(wb.ConfigError, match=r"device=.* is invalid; device must be one of 'auto', 'cpu', 'cuda'"):
        devices.resolve(bad)
    with pytest.raises(wb.ConfigError, match="device must be one of"):
        TrainSettings(device=bad).validate()
    with pytest.raises(wb.ConfigError, match="device must be one of"):
        train(TinyTask(), "lora", device=bad, **FAST)


def test_a_device_this_machine_lacks_is_refused(monkeypatch):
    _availability(monkeypatch, cuda=False, mps=False)
    for name, what in (("cuda", "CUDA is not available"), ("cuda:1", "CUDA is not available"),
                       ("mps", "MPS is not available")):
        with pytest.raises(wb.ConfigError, match=f"device='{name}' but .*{what}"):
            devices.resolve(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(wb.ConfigError, match=r"index must be in \[0, 0\]"):
        devices.resolve("cuda:1")
    assert devices.resolve("cuda:0") == torch.device("cuda:0")


def test_float16_on_the_cpu_and_unknown_dtypes_are_refused():
    with pytest.raises(wb.ConfigError, match="dtype='float16' is not supported on the CPU.*bfloat16"):
        train(TinyTask(), "lora", dtype="float16", device="cpu", **FAST)
    with pytest.raises(wb.ConfigError, match="dtype='half' is invalid; dtype must be one of 'float32', 'bfloat16'"):
        train(TinyTask(), "lora", dtype="half", **FAST)


def _linear_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    """Record the output dtype of every call of the model's first linear layer (a forward hook)."""
    seen: list[torch.dtype] = []
    model.get_submodule("0").register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    return seen


def test_a_bfloat16_run_trains_under_autocast_with_float32_adapter_weights():
    task = TinyTask()
    model16, model32 = tiny_model(), tiny_model()
    seen16, seen32 = _linear_dtypes(model16), _linear_dtypes(model32)
    run = train(task, "lora", r=2, dtype="bfloat16", model=model16, **FAST)
    ref = train(task, "lora", r=2, model=model32, **FAST)
    assert run.status == "completed"
    assert run.config["dtype"] == run.summary["dtype"] == run.config["settings"]["dtype"] == "bfloat16"
    assert run.config["sources"]["settings"]["dtype"] == "explicit"
    # autocast really ran: the training forwards produced bfloat16 activations, the evaluations (outside autocast)
    # float32; the float32 run never saw bfloat16
    assert torch.bfloat16 in seen16 and torch.float32 in seen16 and set(seen32) == {torch.float32}
    assert seen16.count(torch.bfloat16) >= FAST["steps"]
    # the adapter's weights and the frozen model's stay float32
    assert all(p.dtype == torch.float32 for p in run.adaptation.parameters())
    assert all(p.dtype == torch.float32 for p in run.adaptation.model.parameters())
    # it learns like the float32 run, to bfloat16's precision (8 mantissa bits), and not bit for bit
    losses = run.metrics.query("probe == 'train' and key == 'loss'").value.to_numpy()
    losses32 = ref.metrics.query("probe == 'train' and key == 'loss'").value.to_numpy()
    assert losses[-5:].mean() < 0.7 * losses[:5].mean()
    assert run.summary["final_loss"] < 0.7 * run.summary["init_loss"]
    assert abs(losses[0] - losses32[0]) < 2e-2 * losses32[0] and losses[0] != losses32[0]
    assert abs(run.summary["final_loss"] - ref.summary["final_loss"]) < 0.15 * ref.summary["final_loss"]


def test_the_float16_path_scales_the_loss_and_steps_through_the_scaler(monkeypatch):
    """The GradScaler path (CUDA's) run on the CPU with the CPU refusal lifted: the run trains, gradient probes and
    clipping see unscaled gradients, and the record says float16 with the scale."""
    monkeypatch.setattr(devices, "check_dtype", lambda device, dtype: None)
    run = train(TinyTask(), "lora", r=2, dtype="float16", device="cpu", max_grad_norm=1e9,
                **{**FAST, "probes": ["gradients"]})
    assert run.status == "completed" and run.summary["dtype"] == "float16"
    assert run.summary["grad_scale"] == 2.0 ** 16 and run.summary["skipped_steps"] == 0  # no overflow at this size
    assert run.summary["final_loss"] < 0.7 * run.summary["init_loss"]
    # the clip saw the true gradient norm: that of a float32 run at step 0 (same seed, same weights), not S times it
    ref = train(TinyTask(), "lora", r=2, max_grad_norm=1e9, **{**FAST, "probes": ["gradients"]})
    norm = run.metrics.query("key == 'grad_norm_before_clip' and step == 0").value.item()
    norm32 = ref.metrics.query("key == 'grad_norm_before_clip' and step == 0").value.item()
    assert norm == pytest.approx(norm32, rel=2e-2)


def test_a_step_whose_float16_gradients_overflow_is_skipped_and_the_scale_halves(monkeypatch):
    monkeypatch.setattr(devices, "check_dtype", lambda device, dtype: None)
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    prec = Precision(torch.device("cpu"), "float16")
    prec.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)  # 2^16, the default, overflows these fp16 grads
    prec.attach(opt)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    for overflow in (False, True):
        before = lin.weight.detach().clone()
        opt.zero_grad()
        with prec.autocast():
            loss = lin(x).square().mean()
        prec.backward(loss)
        if overflow:
            lin.weight.grad[0, 0] = float("inf")
        scale = prec.scaler.get_scale()
        prec.unscale()
        if not overflow:  # the gradient the optimizer sees is the true one: autograd's, without the scale
            ref = torch.autograd.grad(lin(x).square().mean(), lin.weight)[0]
            torch.testing.assert_close(lin.weight.grad, ref, atol=1e-2, rtol=1e-2)
        opt.step()
        prec.end_step()
        assert torch.equal(lin.weight, before) == overflow  # skipped exactly when the gradients overflowed
        assert prec.scaler.get_scale() == (scale / 2 if overflow else scale)
    assert prec.skipped_steps == 1
    with pytest.raises(wb.ConfigError, match="one backward per step"):  # a second backward after unscaling
        with prec.autocast():
            loss = lin(x).square().mean()
        prec.backward(loss)
        prec.unscale()
        prec.backward(lin(x).square().mean())


def test_batches_are_pinned_when_asked_as_train_asks_for_cuda(monkeypatch):
    from workbench.train import _to

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    batch = {"x": torch.zeros(2, 3), "y": [torch.zeros(2)], "n": 3}
    out = _to(batch, torch.device("cpu"), pin=False)
    assert pinned == [] and out["n"] == 3 and torch.equal(out["x"], batch["x"])
    _to(batch, torch.device("cpu"), pin=True)
    assert pinned == [torch.Size([2, 3]), torch.Size([2])]
