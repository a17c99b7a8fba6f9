"""Every figure builder returns a plotly Figure with the expected traces, and an empty state instead of raising;
every builder has a caption; figures read what variants declare instead of naming them."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch
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


def _builders() -> list[str]:
    """Every public function of figures.py that returns a Figure: the figure builders."""
    return [name for name, fn in inspect.getmembers(F, inspect.isfunction)
            if fn.__module__ == F.__name__ and not name.startswith("_")
            and inspect.signature(fn).return_annotation in ("go.Figure", go.Figure)]


def test_every_figure_builder_has_a_caption():
    builders = _builders()
    assert len(builders) >= 17 and "allocation_heatmap" in builders
    for name in builders:
        text = F.caption(name)
        assert text.strip() and "\n" not in text, name
    assert set(F.CAPTIONS) == set(builders)  # no caption for a builder that is gone
    assert F.caption("allocation_heatmap").startswith("Each row is a module, each column a probe step")
    # a side-by-side panel says what its single-run figure says
    assert F.caption("small_multiples", "allocation").endswith(F.caption("allocation_heatmap"))
    with pytest.raises(KeyError, match="no caption for figure 'nope'"):
        F.caption("nope")


def _located_run(variant: str) -> Run:
    """A run of ``variant`` with DCT and WHT maps of one 8×8 module and three learned locations."""
    run = Run(id="x", config={"variant": variant})
    for kind in ("dct", "wht"):
        run.add_snapshot(0, "frequency", "0", kind, torch.rand(8, 8))
    run.add_snapshot(0, "frequency", "0", "locations", torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]))
    return run


@pytest.mark.parametrize("variant,basis", [("qwha", "wht"), ("loca", "dct")])
def test_locations_are_drawn_on_the_variants_own_basis(variant, basis):
    assert wb.get_variant(variant).Layer.frequency_basis == basis
    run = _located_run(variant)
    other = {"wht": "dct", "dct": "wht"}[basis]
    on_own = F.frequency_map(run, "0", kind=basis)
    assert len(on_own.data) == 2 and list(on_own.data[1].x) == [1.0, 3.0, 5.0]
    assert len(F.frequency_map(run, "0", kind=other).data) == 1  # not overlaid on a basis they do not index


def test_figures_name_no_variant():
    """figures.py reads what a variant declares (``frequency_basis``): no variant's name, no ``.variant ==``."""
    tree = ast.parse(Path(F.__file__).read_text(encoding="utf-8"))
    names = {v.name for v in wb.variant_infos()}
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not names & literals, f"figures.py names variants: {sorted(names & literals)}"
    compared = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Compare)
                and any(isinstance(side, ast.Attribute) and side.attr == "variant"
                        for side in (node.left, *node.comparators))]
    assert not compared, f"figures.py branches on a run's variant: {compared}"
