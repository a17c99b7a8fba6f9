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
    heat = F.allocation_heatmap(lora)  # lora does not allocate: one line, no heatmap
    assert not heat.data and "fixed rank 4 in every module" in heat.layout.annotations[0].text
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
    from workbench.probes.landscape import MODES

    # the landscape's mode "adapter" (directions in adapter space) is a word figures.py must use, not the variant
    names = {v.name for v in wb.variant_infos()} - set(MODES)
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not names & literals, f"figures.py names variants: {sorted(names & literals)}"
    compared = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Compare)
                and any(isinstance(side, ast.Attribute) and side.attr == "variant"
                        for side in (node.left, *node.comparators))]
    assert not compared, f"figures.py branches on a run's variant: {compared}"


# -- sharpness (issue 17, item 6) ------------------------------------------------------------------------------

def test_epsilon_sharpness_matches_a_hand_computation_on_a_quadratic():
    """L(w) = ½ Σ aᵢ wᵢ² is convex, so the box's maximum sits at the corner δᵢ = sign(wᵢ) ε(|wᵢ| + 1)."""
    from workbench.probes.landscape import epsilon_sharpness

    a = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    w = {"w": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)}
    eps = 0.01

    def loss_of(params):
        return 0.5 * (a * params["w"] ** 2).sum()

    base = 0.5 * (1 * 1.0 ** 2 + 3 * 2.0 ** 2 + 2 * 0.5 ** 2)                            # 6.5
    corner = 0.5 * (1 * 1.02 ** 2 + 3 * 2.03 ** 2 + 2 * 0.515 ** 2)                      # |w| + ε(|w| + 1)
    expected = 100 * (corner - base) / (1 + base)
    assert epsilon_sharpness(loss_of, w, epsilon=eps) == pytest.approx(expected, rel=1e-9)
    assert epsilon_sharpness(loss_of, w, epsilon=2 * eps) > expected  # a larger box, a larger rise
    with pytest.raises(wb.ConfigError, match="epsilon"):
        epsilon_sharpness(loss_of, w, epsilon=0)


def test_landscape_sharpness_does_not_scale_with_the_plots_span():
    from workbench.probes.landscape import landscape

    task = TinyTask()
    run = wb.train(task, "lora", steps=30, lr=1e-2, probes=(), progress=False, r=4)
    batch = next(iter(task.batches("val", batch_size=64)))
    values = [landscape(run.adaptation, task, dims=1, steps=5, span=span, batch=batch)["sharpness"]
              for span in (0.5, 1.0, 2.0)]
    assert values[0] > 0 and values[0] == pytest.approx(values[1]) == pytest.approx(values[2])
    wider = landscape(run.adaptation, task, dims=1, steps=5, span=1.0, batch=batch, epsilon=1e-2)
    assert wider["sharpness"] > values[0] and wider["epsilon"] == 1e-2
    assert "ε-sharpness" in F.landscape(wider).layout.title.text


# -- frequency overlays (issue 17, item 4) ---------------------------------------------------------------------

def test_fourierft_entries_are_drawn_shifted_on_the_fft_map_and_called_fixed():
    from workbench.probes.frequency import fft_map

    assert wb.get_variant("fourierft").Layer.frequency_basis == "fft"
    run = Run(id="x", config={"variant": "fourierft"})
    entries = torch.tensor([[0.0, 0.0], [1.0, 6.0], [7.0, 2.0]])  # (row, col) of an unshifted 8×8 spectrum
    dense = torch.zeros(8, 8, dtype=torch.complex64)
    for j, k in entries.long().tolist():
        dense[j, k] = 1.0
    delta = torch.fft.ifft2(dense).real
    for kind in ("dct", "fft"):
        run.add_snapshot(0, "frequency", "0", kind, fft_map(delta) if kind == "fft" else torch.rand(8, 8))
    run.add_snapshot(0, "frequency", "0", "locations", entries)
    assert len(F.frequency_map(run, "0", kind="dct").data) == 1  # not on the DCT map
    fig = F.frequency_map(run, "0", kind="fft")
    marks = fig.data[1]
    assert marks.name == "fixed entries"
    assert list(zip(marks.y, marks.x)) == [(4.0, 4.0), (5.0, 2.0), (3.0, 6.0)]  # (j + 4) mod 8
    z = torch.tensor(fig.data[0].z)
    assert all(z[int(r), int(c)] > 0.1 for r, c in zip(marks.y, marks.x))  # each marker sits on its energy


def test_learned_and_fixed_locations_are_named_by_the_declaration():
    assert wb.get_variant("loca").Layer.learned_locations
    assert not wb.get_variant("qwha").Layer.learned_locations
    assert F.frequency_map(_located_run("loca"), "0", kind="dct").data[1].name == "learned locations"
    assert F.frequency_map(_located_run("qwha"), "0", kind="wht").data[1].name == "fixed entries"


@pytest.mark.parametrize("shape", [(256, 256), (384, 1536), (1536, 384), (100, 300)])
def test_markers_are_rescaled_onto_a_pooled_map(shape):
    """A 256-wide map is stored max-pooled to 128: a location at (j, k) is drawn in the cell that holds it."""
    from workbench.probes.frequency import pooled

    m, n = shape
    g = torch.Generator().manual_seed(0)
    loc = torch.stack([torch.randint(0, m, (200,), generator=g), torch.randint(0, n, (200,), generator=g)], 1)
    full = torch.zeros(m, n)
    full[loc[:, 0], loc[:, 1]] = 1.0
    z = pooled(full)
    run = Run(id="x", config={"variant": "loca"})
    run.add_snapshot(0, "frequency", "0", "dct", z)
    run.add_snapshot(0, "frequency", "0", "locations", loc.float())
    run.add_snapshot(0, "spectra", "0", "singular_values", torch.ones(min(m, n)))
    if max(m, n) > 128:
        run.log(0, "frequency", "0", "map_pooled_from", max(m, n))
    marks = F.frequency_map(run, "0", kind="dct").data[1]
    rows, cols = torch.tensor(marks.y).long(), torch.tensor(marks.x).long()
    assert int(rows.max()) < z.shape[0] and int(cols.max()) < z.shape[1]  # all inside the map
    assert bool((z[rows, cols] == 1.0).all())  # each on a lit cell


def test_one_sided_variants_declare_it():
    assert wb.get_variant("qwha").Layer.frequency_sides == "input"
    assert wb.get_variant("loca").Layer.frequency_sides == "both"
    run = _located_run("qwha")
    run.log(0, "frequency", "0", "wht_input_side_only", 1.0)
    fig = F.frequency_map(run, "0", kind="wht")
    assert fig.layout.yaxis.title.text == "output channel" and "along the input" in fig.layout.title.text


# -- notebooks exported to HTML keep their figures (issue 17, item 2) -------------------------------------------

def test_an_exported_notebook_contains_its_plot_offline():
    """nbconvert keeps only outputs it can render: with ``setup_notebook()`` every figure also has a ``text/html``
    output, and plotly.js is embedded once in the notebook (no script loaded from plotly's CDN)."""
    import re

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nbconvert = pytest.importorskip("nbconvert")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from workbench import figures\nfigures.setup_notebook()"),
                nbformat.v4.new_code_cell("import plotly.graph_objects as go\ngo.Figure(go.Scatter(y=[1, 3, 2]))"),
                nbformat.v4.new_code_cell("go.Figure(go.Bar(y=[1, 2]))")]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    figure_outputs = [o for cell in nb.cells[1:] for o in cell.outputs if "application/vnd.plotly.v1+json" in
                      o.get("data", {})]
    assert len(figure_outputs) == 2 and all("text/html" in o["data"] for o in figure_outputs)
    html, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    assert html.count('class="plotly-graph-div"') == 2
    assert html.count("plotly.js v") == 1  # the library itself, embedded once
    assert not re.search(r"<script[^>]*src=[\"']https?://cdn\.plot\.ly", html)


def test_the_notebooks_set_up_the_renderer_once():
    import json

    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
        calls = ["".join(c["source"]).count("figures.setup_notebook()") for c in cells]
        assert calls[0] == 1 and sum(calls) == 1, path.name
