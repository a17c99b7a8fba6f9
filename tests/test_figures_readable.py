"""Figures a teacher and a researcher can read (issue 17, items 7, 8, 9, 10 and 12, and DoRA's own view): one colour
scale per comparison whose white is zero, one line for a variant that does not allocate, the true ranks beside the
allocation; frequency views drawn with few WebGL markers; short module names coloured by layer and legends beside
the plot; seeds as a mean ± band, sweeps apart, the metric by its name; numbers with four significant digits and
powers of ten; learned magnitudes against ‖W0‖."""

from __future__ import annotations

import json
import math
import time

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

import workbench as wb
from workbench import figures as F
from workbench.runs import Run, RunStore

MINILM = [f"encoder.encoder.layer.{i}.attention.self.{kind}" for i in range(6) for kind in ("query", "value")]


def _ranked_run(variant: str, ranks: dict[str, list[float]], steps=(0, 10, 20)) -> Run:
    """A run whose ranks probe recorded ``ranks[module][k]`` at ``steps[k]``."""
    run = Run(id=f"{variant}-x", config={"variant": variant, "seed": 0, "lr": 0.01})
    for module, values in ranks.items():
        for step, value in zip(steps, values):
            run.log(step, "ranks", module, "rank", value)
    return run


def _hex(colour: str) -> tuple[int, int, int]:
    colour = colour.strip()
    if colour.startswith("#"):
        return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return tuple(int(float(c)) for c in colour[colour.index("(") + 1:colour.index(")")].split(",")[:3])


def _cell_colour(fig: go.Figure, trace: go.Heatmap, value: float) -> tuple[int, int, int]:
    """The colour plotly gives ``value`` in ``trace``, computed here from the colour scale and its ends (the trace's
    own zmin/zmax, or the data's range when it scales itself, or its shared colour axis)."""
    if trace.coloraxis:
        axis = fig.layout[trace.coloraxis]
        scale, lo, hi = axis.colorscale, axis.cmin, axis.cmax
    else:
        z = [v for row in trace.z for v in row if v is not None]
        scale = trace.colorscale
        lo = trace.zmin if trace.zmin is not None else min(z)
        hi = trace.zmax if trace.zmax is not None else max(z)
    t = 0.0 if hi == lo else min(1.0, max(0.0, (value - lo) / (hi - lo)))
    for (a, ca), (b, cb) in zip(scale, scale[1:]):
        if a <= t <= b:
            w = 0.0 if b == a else (t - a) / (b - a)
            return tuple(round(x + w * (y - x)) for x, y in zip(_hex(ca), _hex(cb)))
    return _hex(scale[-1][1])


WHITE = (255, 255, 255)


def _whitish(colour: tuple[int, int, int]) -> bool:
    """Read as white on a page (plotly's Blues starts at rgb(247, 251, 255))."""
    return min(colour) >= 235


def _cells(heat: go.Heatmap) -> dict:
    """value -> z of each cell: a heatmap that draws bands keeps the values in ``customdata``."""
    values = heat.customdata if heat.customdata is not None else heat.z
    return {v: z for row_v, row_z in zip(values, heat.z) for v, z in zip(row_v, row_z)}


# -- item 7: shared colour scales, white is zero, fixed ranks in one line, the true ranks --------------------------

def test_zero_is_white_and_only_zero():
    """The old heatmap scaled itself to its data: ranks 63 and 64 drew 63 white, as if the module had none."""
    run = _ranked_run("sora", {"layers.0": [64, 64, 63], "layers.1": [64, 63, 63]})
    fig = F.allocation_heatmap(run)
    (heat,) = [t for t in fig.data if isinstance(t, go.Heatmap)]
    cells = _cells(heat)
    assert not _whitish(_cell_colour(fig, heat, cells[63])) and not _whitish(_cell_colour(fig, heat, cells[64]))
    pruned = F.allocation_heatmap(_ranked_run("sora", {"a": [8, 4, 0], "b": [8, 8, 1]}))
    (heat,) = pruned.data
    colours = {v: _cell_colour(pruned, heat, z) for v, z in _cells(heat).items()}
    assert colours[0] == WHITE and not any(_whitish(c) for v, c in colours.items() if v > 0)
    assert len(set(colours.values())) == len(colours)  # 0, 1, 4 and 8 each a colour of their own


def test_side_by_side_heatmaps_share_one_colour_axis():
    a = _ranked_run("sora", {"layers.0": [8, 6, 2], "layers.1": [8, 8, 8]})
    b = _ranked_run("adalora", {"layers.0": [12, 3, 0], "layers.1": [8, 12, 12]})
    fig = F.small_multiples([a, b], "allocation")
    heats = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert len(heats) == 2 and {t.coloraxis for t in heats} == {"coloraxis"}  # one scale, one colour bar
    assert fig.layout.coloraxis.colorbar.title.text == "rank"
    # the same rank is the same colour in both panels: 8 in the first, 8 in the second
    eight = [_cell_colour(fig, heats[0], heats[0].z[0][0]), _cell_colour(fig, heats[1], heats[1].z[1][0])]
    assert heats[0].customdata[0][0] == heats[1].customdata[1][0] == 8
    assert eight[0] == eight[1]
    maps = []
    for k, scale in enumerate((1.0, 5.0)):
        run = Run(id=f"m{k}", config={"variant": "lora"})
        run.add_snapshot(0, "frequency", "0", "dct", scale * torch.rand(8, 8, generator=torch.Generator().
                                                                        manual_seed(k)))
        maps.append(run)
    fig = F.small_multiples(maps, "dct")
    assert {t.coloraxis for t in fig.data} == {"coloraxis"} and fig.layout.coloraxis.cmin == 0
    assert fig.layout.coloraxis.cmax == pytest.approx(max(float(torch.tensor(t.z).max()) for t in fig.data))


def test_a_variant_that_does_not_allocate_gets_one_line():
    lora = _ranked_run("lora", {"layers.0": [8, 8, 8], "layers.1": [8, 8, 8]})
    assert F.allocation_summary(lora) == "lora does not allocate: fixed rank 8 in every module"
    fig = F.allocation_heatmap(lora)
    assert not fig.data and fig.layout.annotations[0].text == F.allocation_summary(lora)
    assert fig.layout.height <= 150  # one line, not a panel
    sora = _ranked_run("sora", {"layers.0": [8, 8, 8], "layers.1": [8, 4, 2]})
    assert F.allocation_summary(sora) is None  # it allocates: its heatmap
    # LoCA allocates its spectral locations, not its rank: a full-rank heatmap of one colour would say nothing
    loca = _ranked_run("loca", {"layers.0": [64, 64, 63], "layers.1": [64, 64, 64]})
    assert F.allocation_summary(loca) == ("loca allocates spectral locations, not rank (see its variant views): ΔW "
                                          "has rank L0 63, L1 64")
    assert not F.allocation_heatmap(loca).data
    side = F.small_multiples([lora, sora], "allocation")
    assert sum(isinstance(t, go.Heatmap) for t in side.data) == 1
    assert any("fixed rank 8" in a.text for a in side.layout.annotations)


def test_the_true_ranks_are_drawn_beside_the_allocation():
    task = wb.tasks.get("synthetic:mixed", dim=32, depth=6)
    run = wb.train(task, "sora", steps=20, every=10, probes=("spectra", "ranks"), progress=False)
    truth = task.true_ranks()
    assert F.true_ranks(run) == truth
    fig = F.allocation_heatmap(run)
    learned, true = fig.data
    assert list(true.x) == ["true"] and learned.coloraxis == true.coloraxis == "coloraxis"
    assert list(true.y) == list(learned.y) == [F.short_name(m) for m in truth]
    assert [int(t[0]) for t in true.text] == list(truth.values())
    zero = [z[0] for z, v in zip(true.z, truth.values()) if v == 0]
    assert zero and _cell_colour(fig, true, zero[0]) == WHITE  # the layer with no true update is white


# -- item 8: frequency views with few WebGL markers ---------------------------------------------------------------

def _markers(fig: go.Figure) -> tuple[int, int]:
    """(markers drawn as WebGL, markers drawn as SVG) over a figure's scatter traces."""
    gl = svg = 0
    for t in fig.data:
        if t.type in ("scatter", "scattergl") and "markers" in (t.mode or "") and t.x is not None:
            n = sum(v is not None for v in t.x)
            gl, svg = (gl + n, svg) if t.type == "scattergl" else (gl, svg + n)
    return gl, svg


@pytest.fixture(scope="module")
def loca_run():
    task = wb.tasks.get("synthetic:dct", dim=64, depth=2)
    return wb.train(task, "loca", steps=60, every=5, probes=("frequency", "spectra"), progress=False, n=1000)


def test_loca_views_draw_few_webgl_markers(loca_run):
    run = loca_run
    module = run.snapshot_modules("frequency", "locations")[0]
    steps = run.snapshot_steps("frequency", "locations", module)
    n = len(run.snapshot("frequency", "locations", module))
    assert n == 1000 and len(steps) >= 12  # the old trajectory drew n markers per step: 12,000+ SVG circles
    start = time.perf_counter()
    figs = {"map": F.frequency_map(run, module, kind="dct"), "paths": F.location_trajectories(run, module),
            "views": F.variant_views(run, module)}
    seconds = time.perf_counter() - start
    for name, fig in figs.items():
        gl, svg = _markers(fig)
        assert gl + svg <= 2000 and svg == 0, (name, gl, svg)
    marks = figs["map"].data[1]
    assert len(marks.x) == F.TOP_LOCATIONS and "top 200 of 1000" in marks.name
    coef = run.snapshot("frequency", "coefficients", module).abs()
    at = F.map_coordinates(run, module, "dct", run.snapshot("frequency", "locations", module), (64, 64))
    kept = {(int(r), int(c)) for r, c in zip(marks.y, marks.x)}
    strongest = {tuple(int(v) for v in at[j]) for j in coef.argsort(descending=True)[:F.TOP_LOCATIONS].tolist()}
    assert kept == strongest  # the strongest coefficients, not the first 200
    moved = [t for t in figs["paths"].data if t.name and t.name.startswith("end")]
    assert moved and "moved" in moved[0].name
    assert seconds < 2.0, f"three frequency views took {seconds:.2f} s to build"
    size = sum(len(json.dumps(f.to_plotly_json(), default=str)) for f in figs.values())
    print(f"\nLoCA views: built in {seconds * 1000:.0f} ms, {size / 1e3:.0f} kB of JSON, markers "
          f"{[sum(_markers(f)) for f in figs.values()]}")


def test_the_coefficient_chart_shows_the_largest_sorted(loca_run):
    run = loca_run
    module = run.snapshot_modules("frequency", "coefficients")[0]
    fig = F.variant_views(run, module)
    (bars,) = fig.data
    coef = run.snapshot("frequency", "coefficients", module)
    assert len(bars.y) == F.TOP_BARS
    assert [abs(v) for v in bars.y] == pytest.approx(sorted(coef.abs().tolist(), reverse=True)[:F.TOP_BARS])
    loc = run.snapshot("frequency", "locations", module)
    first = int(coef.abs().argmax())
    assert bars.x[0] == f"({int(loc[first, 0])},{int(loc[first, 1])})"  # labelled by its cell


def test_fourierft_entries_are_few_webgl_markers():
    task = wb.tasks.get("synthetic:dct", dim=64, depth=2)
    run = wb.train(task, "fourierft", steps=10, every=5, probes=("frequency",), progress=False)
    fig = F.frequency_map(run, kind="fft")
    gl, svg = _markers(fig)
    assert svg == 0 and gl == F.TOP_LOCATIONS and fig.data[1].name.startswith("fixed entries")


# -- item 9: real models ----------------------------------------------------------------------------------------

def test_module_names_are_short_and_unique():
    assert [F.short_name(m) for m in MINILM[:4]] == ["L0.q", "L0.v", "L1.q", "L1.v"]
    assert F.short_name("encoder.encoder.layer.3.attention.output.dense") == "L3.o"
    assert F.short_name("encoder.encoder.layer.3.intermediate.dense") == "L3.up"
    assert F.short_name("blocks.1.mlp.fc2") == "L1.fc2" and F.short_name("layers.4") == "L4"
    assert F.short_name("0") == "0" and F.short_name("head") == "head"
    names = F.short_names(MINILM + ["decoder.layer.0.attention.self.query"])
    assert len(set(names.values())) == len(names)  # the two L0.q keep their full names
    assert names["encoder.encoder.layer.5.attention.self.value"] == "L5.v"


def _minilm_run() -> Run:
    run = Run(id="x", config={"variant": "sora", "lr": 0.01, "seed": 0})
    for i, m in enumerate(MINILM):
        for step in (0, 10, 20):
            run.log(step, "spectra", m, "effective_rank", 1 + i + step / 10)
            run.log(step, "ranks", m, "rank", 8 - step // 10)
    return run


def test_real_model_modules_read_short_and_coloured_by_layer():
    run = _minilm_run()
    heat = F.allocation_heatmap(run).data[0]
    assert list(heat.y) == [F.short_name(m) for m in MINILM] and max(len(y) for y in heat.y) <= 5
    fig = F.effective_rank_over_time(run)
    names = [t.name for t in fig.data]
    assert names == [F.short_name(m) for m in MINILM]
    colour = {t.name: t.line.color for t in fig.data}
    assert colour["L0.q"] == colour["L0.v"] != colour["L1.q"]  # one colour per layer
    assert len({colour[f"L{i}.q"] for i in range(6)}) == 6


def test_legends_sit_beside_the_plot_not_over_the_title(loca_run):
    assert F.LAYOUT["legend"]["x"] >= 1 and F.LAYOUT["legend"]["orientation"] == "v"
    for fig in (F.loss_curves(loca_run), F.effective_rank_over_time(_minilm_run()), F.spectra(loca_run)):
        legend = fig.layout.legend
        assert legend.x >= 1 and legend.xanchor == "left" and legend.orientation == "v"


def test_the_spectrum_shows_the_module_asked_for(loca_run):
    modules = loca_run.snapshot_modules("spectra", "singular_values")
    fig = F.spectra(loca_run, module=modules[1])
    s = loca_run.snapshot("spectra", "singular_values", modules[1])
    assert F.short_name(modules[1]) in fig.layout.title.text
    assert fig.data[0].y[0] == pytest.approx(float(s[0]))


# -- item 10: seeds, sweeps and the metric's name ------------------------------------------------------------------

def _seed_run(variant: str, seed: int, lr: float, losses: list[float], metric: float) -> Run:
    run = Run(id=f"{variant}-{seed}-{lr}", config={"variant": variant, "seed": seed, "lr": lr})
    for step, loss in enumerate(losses):
        run.log(step, "train", "", "loss", loss)
    run.log(len(losses) - 1, "eval", "", "loss", losses[-1])
    run.status = "completed"
    run.summary.update(metric="rel_error", metric_value=metric, higher_is_better=False, final_loss=losses[-1],
                       trainable_params=1024, seconds_per_step=0.0123456)
    return run


def test_seed_runs_are_drawn_as_a_mean_and_band_per_variant():
    runs = [_seed_run("lora", s, 0.01, [1.0 + s, 0.5 + s, 0.2 + s], 0.1 + s) for s in (0, 1, 2)] + \
           [_seed_run("full", s, 0.001, [2.0, 1.0 * (s + 1), 0.5], 0.3) for s in (0, 1)]
    fig = F.loss_curves(runs)
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert legend == ["lora (mean ± sd, 3 runs) train", "full (mean ± sd, 2 runs) train",
                      "lora (mean ± sd, 3 runs) val", "full (mean ± sd, 2 runs) val"]  # was 10 entries
    mean = next(t for t in fig.data if t.name == "lora (mean ± sd, 3 runs) train")
    assert list(mean.y) == pytest.approx([2.0, 1.5, 1.2])
    band = next(t for t in fig.data if t.fill == "toself" and t.legendgroup == "lora")
    sd = pd.Series([0.0, 1.0, 2.0]).std(ddof=0)
    assert list(band.y[:3]) == pytest.approx([2.0 + sd, 1.5 + sd, 1.2 + sd])
    faint = [t.name for t in fig.data if t.showlegend is False and t.fill != "toself"]
    assert "lora · lr=0.01, seed=1" in faint and "full · lr=0.001, seed=0" in faint


def test_runs_of_two_tasks_or_two_rates_are_never_averaged():
    a = _seed_run("lora", 0, 0.01, [1.0, 0.5], 0.1)
    b = _seed_run("lora", 1, 0.01, [3.0, 2.0], 0.2)
    b.config["task"] = "synthetic:fullrank"
    c = _seed_run("lora", 2, 0.1, [2.0, 1.0], 0.3)
    fig = F.loss_curves([a, b, c])
    assert not any(t.fill == "toself" for t in fig.data)  # three groups of one: each run its own lines
    assert len([t for t in fig.data if t.name.endswith(" train")]) == 3


def test_training_lines_smooth_as_tensorboard_does_and_validation_never():
    run = _seed_run("lora", 0, 0.01, [4.0, 2.0, 3.0, 1.0], 0.1)
    fig = F.loss_curves(run, smoothing=0.6)
    expected, ema = [], 0.0
    for t, v in enumerate([4.0, 2.0, 3.0, 1.0], start=1):  # debiased EMA, written out
        ema = 0.6 * ema + 0.4 * v
        expected.append(ema / (1 - 0.6 ** t))
    train = next(t for t in fig.data if t.name == "lora train")
    raw = next(t for t in fig.data if t.name == "lora train (raw)")
    assert list(train.y) == pytest.approx(expected) and list(raw.y) == [4.0, 2.0, 3.0, 1.0]
    assert list(next(t for t in fig.data if t.name == "lora val").y) == [1.0]
    with pytest.raises(wb.ConfigError, match=r"smoothing=1.5 is invalid; smoothing must be a number in \[0, 0.99\]"):
        F.loss_curves(run, smoothing=1.5)


def test_the_results_table_names_the_metric_and_exports(tmp_path):
    runs = [_seed_run("lora", s, 0.01, [1.0, 0.5], 0.123456789 + s) for s in (1, 0)]
    df = F.results_frame(runs, role="compared")
    metric = "rel_error (lower is better)"
    assert list(df.columns) == ["variant", "role", "setting", "status", "trainable_params", "final_loss", metric,
                                "ms_per_step", "run_id"]
    assert list(df.setting) == ["lr=0.01, seed=0", "lr=0.01, seed=1"]  # seed order within a variant
    assert list(df[metric]) == [0.1235, 1.123] and df[metric].dtype == float  # four digits, still sortable
    assert list(df.ms_per_step) == [12.35, 12.35]
    path = tmp_path / "results.csv"
    df.to_csv(path, index=False)
    assert pd.read_csv(path)[metric].tolist() == [0.1235, 1.123]
    table = pd.DataFrame([{"variant": "lora", "metric": "rel_error", "metric_value": 9.645427984400854e-06,
                           "status": "completed"}])
    header = F.comparison_table(table).data[0].header.values
    cells = F.comparison_table(table).data[0].cells.values
    assert "rel_error" in header and "metric_value" not in header and list(cells[1]) == ["9.645×10⁻⁶"]
    assert F.comparison_bars(table).layout.yaxis.title.text == "rel_error"


def test_the_sweep_is_a_figure_of_its_own():
    runs = [_seed_run("lora", 0, lr, [1.0], m) for lr, m in ((1e-3, 0.5), (1e-2, 0.2), (1e-1, 0.9))]
    fig = F.lr_sweep(runs)
    line, ring = fig.data
    assert list(line.x) == [1e-3, 1e-2, 1e-1] and list(ring.x) == [1e-2]  # the best, lower is better
    assert fig.layout.xaxis.type == "log" and "rel_error" in fig.layout.title.text
    assert list(F.lr_sweep(runs, chosen={"lora": 0.1}).data[1].x) == [0.1]


# -- item 12: numbers --------------------------------------------------------------------------------------------

def test_numbers_have_four_significant_digits_and_powers_of_ten():
    assert F.fmt_number(9.645427984400854e-06) == "9.645×10⁻⁶"
    assert F.fmt_number(0.1259341902) == "0.1259" and F.fmt_number(3.0) == "3" and F.fmt_number(1e-4) == "1×10⁻⁴"
    assert F.fmt_number(123456.7) == "1.235×10⁵" and F.fmt_number(2048) == "2048"
    assert F.sharpness_text({"sharpness": 3.4912345, "epsilon": 1e-3}, short=True) == \
        "ε-sharpness 3.491% (ε = 0.001)"


def test_log_axes_label_powers_of_ten_only():
    runs = [_seed_run("lora", 0, 0.01, [1.0, 1e-2, 1e-5], 0.1)]
    axis = F.loss_curves(runs).layout.yaxis
    assert axis.type == "log" and axis.exponentformat == "power" and axis.dtick == 1  # not "D1"/"D2": no 2s, 5s
    narrow = F.loss_curves([_seed_run("lora", 0, 0.01, [0.5, 0.3, 0.2], 0.1)]).layout.yaxis
    assert narrow.tickvals and all(float(t) == pytest.approx(float(x)) for t, x in zip(narrow.ticktext,
                                                                                       narrow.tickvals))
    assert F.TEMPLATE.layout.xaxis.exponentformat == F.TEMPLATE.layout.yaxis.exponentformat == "power"
    fig = F.loss_curves(runs)
    F.set_y_scale(fig, "linear")
    assert fig.layout.yaxis.type == "linear" and fig.layout.yaxis.dtick is None


def test_spectra_are_floored_relative_to_the_top_singular_value():
    run = Run(id="x", config={"variant": "lora"})
    run.add_snapshot(10, "spectra", "0", "singular_values", torch.tensor([2.0, 0.5, 1e-9, 0.0]))
    fig = F.spectra(run, "0")
    assert min(fig.data[0].y) == pytest.approx(2e-6)  # 10⁻⁶·σ₁, not 10⁻¹²
    assert fig.layout.yaxis.range[0] == pytest.approx(math.log10(2e-6) - 0.1)
    heat = F.spectra_over_time(run, "0").data[0]
    assert heat.zmin == pytest.approx(math.log10(2e-6)) and min(heat.z[0]) == pytest.approx(math.log10(2e-6))


# -- DoRA's own view ---------------------------------------------------------------------------------------------

def test_dora_magnitudes_are_drawn_against_the_row_norms_of_w0(tmp_path):
    task = wb.tasks.get("synthetic:lowrank", dim=32, depth=2)
    run = wb.train(task, "dora", steps=30, every=10, probes=(), progress=False, store=RunStore(tmp_path), lr=0.02)
    fig = F.magnitude_view(run, "layers.0")
    layer = dict(run.adaptation.named_layers())["layers.0"]
    w0 = task.model().layers[0].weight  # the pretrained weight, read from a fresh model
    assert list(fig.data[0].x) == pytest.approx(torch.linalg.vector_norm(w0, dim=1).tolist(), rel=1e-5)
    assert list(fig.data[0].y) == pytest.approx(layer.magnitude.detach().tolist(), rel=1e-6)
    assert max(abs(a - b) for a, b in zip(fig.data[0].x, fig.data[0].y)) > 1e-4  # training moved m
    w = layer.effective_weight().detach()
    cos = torch.nn.functional.cosine_similarity(w, w0, dim=1)
    assert list(fig.data[1].x) == pytest.approx((1 - cos).tolist(), abs=1e-6)
    assert isinstance(fig.data[0], go.Scattergl) and fig.data[-1].name.startswith("m = ‖W0‖_c")
    saved = RunStore(tmp_path).load(run.id)  # loaded from disk: its adapter is restored to read m
    assert list(F.magnitude_view(saved, "layers.0").data[0].y) == pytest.approx(list(fig.data[0].y), rel=1e-6)
    lora = wb.train(task, "lora", steps=2, probes=(), progress=False)
    assert not F.magnitude_view(lora).data  # no magnitude: a note, not an error
