"""Every figure builder returns a plotly Figure with the expected traces, and an empty state instead of raising."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
from conftest import TinyTask

import workbench as wb
from workbench import figures as F
from workbench.runs import Run


@pytest.fixture(scope="module")
def runs():
    task = TinyTask()
    return [wb.train(task, "lora", steps=20, every=5, progress=False, r=4),
            wb.train(task, "full", steps=20, every=5, progress=False)]


def test_run_figures(runs):
    lora = runs[0]
    assert len(F.loss_curves(runs).data) == 4  # train + val per run
    assert len(F.spectra(lora, module="0").data) == 2  # ΔW and the truth
    assert isinstance(F.spectra_over_time(lora, "0").data[0], go.Heatmap)
    assert len(F.effective_rank_over_time(runs).data) == 4  # 2 runs x 2 modules
    assert len(F.subspace_similarity(runs).data) == 4
    assert len(F.gradient_norms(runs).data) == 6  # 2 modules + total, per run
    assert isinstance(F.frequency_map(lora, "0").data[0], go.Heatmap)
    heat = F.allocation_heatmap(lora)
    assert list(heat.data[0].y) == ["0", "2"]
    assert len(F.small_multiples(runs, "spectra").data) == 4
    assert len(F.small_multiples(runs, "dct").data) == 2
    assert isinstance(F.delta_heatmap(lora.adaptation.delta_weights()["0"]).data[0], go.Heatmap)


def test_comparison_figures():
    cmp = wb.compare(TinyTask(), ["lora", "full"], steps=10, lr=1e-2, seeds=(0, 1), probes=())
    assert isinstance(F.comparison_table(cmp.table).data[0], go.Table)
    bars = F.comparison_bars(cmp.table)
    assert list(bars.data[0].x) == ["lora", "full"]
    assert len(F.parameters_vs_quality(cmp.table).data[0].x) == 2


def test_empty_states_do_not_raise():
    empty = Run(id="x", config={"variant": "lora"})
    for fig in (F.loss_curves(empty), F.spectra(empty), F.spectra_over_time(empty), F.frequency_map(empty),
                F.allocation_heatmap(empty), F.gradient_norms(empty), F.small_multiples([empty]),
                F.landscape({}), F.comparison_table(None), F.comparison_bars(None)):
        assert isinstance(fig, go.Figure) and fig.layout.annotations


def test_diverged_run_is_flagged():
    run = wb.train(TinyTask(), "lora", steps=30, lr=1e6, probes=(), progress=False)
    fig = F.loss_curves(run)
    assert any("diverged" in a.text for a in fig.layout.annotations)
