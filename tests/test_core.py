"""adapt() targets and errors, Adaptation handles, and the training loop's guarantees."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import TinyTask, tiny_model

import workbench as wb
from workbench.runs import RunStore
from workbench.train import train

# -- adapt ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("targets,expected", [(["0", "2"], ["0", "2"]), ("*", ["0", "2"]), ("re:[02]", ["0", "2"]),
                                              (["2"], ["2"])])
def test_target_patterns(targets, expected):
    assert wb.match_targets(tiny_model(), targets) == expected


def test_bare_suffix_matches_like_peft():
    from torch import nn

    m = nn.Module()
    m.block = nn.Module()
    m.block.query, m.block.value, m.block.other = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
    assert wb.match_targets(m, ["query", "value"]) == ["block.query", "block.value"]


def test_pattern_matching_nothing_suggests_names():
    with pytest.raises(wb.ConfigError, match="matches no nn.Linear layer.*Linear layers: 0, 2"):
        wb.adapt(tiny_model(), "lora", ["layers.*"])


def test_unknown_variant_suggests():
    with pytest.raises(wb.ConfigError, match="did you mean 'lora'"):
        wb.adapt(tiny_model(), "lroa", ["0"])


def test_rank_bound_names_layer_and_range():
    with pytest.raises(wb.ConfigError, match=r"r=0 is invalid; r must be an integer in \[1, 32\] for layer 0"):
        wb.adapt(tiny_model(), "lora", ["0"], r=0)


def test_adapting_twice_is_an_error():
    m = tiny_model()
    wb.adapt(m, "lora", ["0"])
    with pytest.raises(wb.ConfigError, match="already adapted"):
        wb.adapt(m, "lora", ["2"])


def test_disabled_gives_base_output():
    m = tiny_model()
    x = torch.randn(4, 32)
    base = m(x)
    ad = wb.adapt(m, "lora", ["0", "2"], r=4)
    with torch.no_grad():
        for _, layer in ad.named_layers():
            layer.lora_B.normal_()
    assert not torch.allclose(m(x), base)
    with ad.disabled():
        torch.testing.assert_close(m(x), base, atol=0, rtol=0)
    assert not torch.allclose(m(x), base)


def test_adapt_does_not_touch_global_rng():
    model = tiny_model()  # building nn.Linear layers draws from the global RNG; adapt() must not
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    wb.adapt(model, "lora", ["0", "2"])
    torch.testing.assert_close(torch.rand(3), expected)


def test_variant_table_lists_registry():
    """The table has one row per Variant class defined in the variant modules (found by walking the package, not
    through the registry), with the class's own family and paper: a module that is not imported, a class that is
    not registered or a row that is dropped or doubled all fail here."""
    import importlib
    import inspect
    import pkgutil

    package = importlib.import_module("workbench.variants")
    defined = {}
    for module_info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        module = importlib.import_module(module_info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, wb.Variant) and cls is not wb.Variant and cls.__module__ == module.__name__:
                defined[cls.__qualname__ + " in " + module.__name__] = cls
    assert all(wb.get_variant(cls.name) is cls for cls in defined.values()), "a Variant class is not registered"
    t = wb.variant_table()
    assert t.name.is_unique and sorted(t.name) == sorted(cls.name for cls in defined.values())
    rows = t.set_index("name")
    assert all(rows.loc[cls.name, "family"] == cls.family and rows.loc[cls.name, "paper"] == cls.paper
               for cls in defined.values())
    assert {"full", "lora", "rslora", "dora", "pissa"} <= set(t.name)


# -- train ---------------------------------------------------------------------------------------------------

def test_training_is_deterministic_for_a_seed():
    a = train(TinyTask(), "lora", steps=20, lr=1e-2, seed=3, probes=(), progress=False)
    b = train(TinyTask(), "lora", steps=20, lr=1e-2, seed=3, probes=(), progress=False)
    c = train(TinyTask(), "lora", steps=20, lr=1e-2, seed=4, probes=(), progress=False)
    assert a.loss_curve().value.tolist() == b.loss_curve().value.tolist()
    assert a.loss_curve().value.tolist() != c.loss_curve().value.tolist()


@pytest.mark.parametrize("lr", [float("nan"), 1e6])
def test_divergence_is_reported_and_last_good_state_kept(lr):
    run = train(TinyTask(), "lora", steps=40, lr=lr, probes=(), progress=False)
    assert run.status == "diverged"
    assert run.summary["diverged_at_step"] >= 1
    losses = run.loss_curve().value
    assert losses.map(lambda v: v == v and abs(v) < 1e30).all()  # nothing non-finite was recorded as a loss
    assert all(torch.isfinite(p).all() for p in run.adaptation.parameters())
    assert run.summary["final_loss"] <= 10 * run.summary["init_loss"]  # the restored adapter is a sane one


def test_bad_training_settings_are_config_errors():
    with pytest.raises(wb.ConfigError, match="steps=0 is invalid"):
        train(TinyTask(), "lora", steps=0, probes=())
    with pytest.raises(wb.ConfigError, match="lr=-1 is invalid"):
        train(TinyTask(), "lora", steps=5, lr=-1, probes=())
    with pytest.raises(wb.ConfigError, match="batch_size"):
        train(TinyTask(), "lora", steps=5, batch_size=0, probes=())


def test_stop_ends_the_run_early():
    calls = []

    def stop_after_three(event):
        if event.type == "progress":
            calls.append(event)
            if len(calls) == 3:
                event.control.stop()

    run = train(TinyTask(), "lora", steps=500, probes=(), progress=False, every=5, callback=stop_after_three)
    assert run.status == "stopped"
    assert run.summary["steps_done"] == 11  # checks after steps 0, 5 and 10, then the stop is honoured


def test_a_control_stops_the_run_from_outside():
    control = wb.TrainControl()
    control.stop()
    run = train(TinyTask(), "lora", steps=50, probes=(), progress=False, control=control)
    assert run.status == "stopped" and run.summary["steps_done"] == 0


def test_events_stream_in_order():
    types = []
    train(TinyTask(), "lora", steps=25, probes=(), progress=False, every=10, callback=lambda e: types.append(e.type))
    assert types[0] == "start" and types[-1] == "end"
    assert types.count("progress") >= 3


# -- run store ------------------------------------------------------------------------------------------------

def test_a_run_can_be_read_while_another_thread_logs_to_it():
    # the dashboard reads a live run's metrics and snapshots while the training thread adds to them
    import threading

    from workbench.runs import Run

    run, done, errors, sizes = Run(id="live", config={}), threading.Event(), [], []
    zero = torch.zeros(1)

    def writer():
        for i in range(20_000):
            run.log(i, "loss", "", "train", float(i))
            if i % 10 == 0:
                run.add_snapshot(i, "spectra", f"m{i % 7}", "sigma", zero)
            if i % 200 == 0:
                time.sleep(0.001)  # let the reader in, mid-stream
        done.set()

    def reader():
        try:
            while not done.is_set():
                frame = run.metrics
                assert list(frame.step) == list(range(len(frame)))  # a consistent prefix, never torn
                sizes.append(len(frame))
                run.snapshot_steps("spectra", "sigma")
                run.snapshot_modules("spectra", "sigma")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(sizes) > 1 and sizes == sorted(sizes)
    assert len(run.metrics) == 20_000  # the cache follows the appends


def test_run_store_round_trip(tmp_path):
    store = RunStore(tmp_path)
    run = train(TinyTask(), "lora", steps=20, probes=(), progress=False, store=store, r=4)
    listed = store.list()
    assert listed.id.tolist() == [run.id] and listed.status[0] == "completed"
    loaded = store.load(run.id)
    assert loaded.status == "completed"
    pd_equal = loaded.metrics.reset_index(drop=True).equals(run.metrics.reset_index(drop=True))
    assert pd_equal
    ad = loaded.restore(TinyTask())
    x = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(ad.model(x), run.adaptation.model(x))
    store.delete(run.id)
    assert store.list().empty


KILLED_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import TinyTask
from workbench.train import train
train(TinyTask(), "lora", steps=10**7, every=5, probes=(), progress=False, store={root!r})
"""


def test_killed_run_is_still_readable(tmp_path):
    """SIGKILL a training process mid-run: the store still lists and loads it, with the metrics flushed so far."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = KILLED_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            files = list(tmp_path.glob("*/metrics.jsonl"))
            if files and files[0].stat().st_size > 2000:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the training process wrote no metrics in 60 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    store = RunStore(tmp_path)
    (run_id,) = store.list().id.tolist()
    loaded = store.load(run_id)
    assert loaded.status == "interrupted"  # its heartbeat stopped: the process is gone (issue 16)
    assert len(loaded.loss_curve()) >= 10
    assert loaded.loss_curve().step.is_monotonic_increasing


def test_run_store_rejects_path_tricks(tmp_path):
    with pytest.raises(ValueError):
        RunStore(tmp_path).load("../etc")
