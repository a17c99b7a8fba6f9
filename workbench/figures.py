"""Every figure of the project, as plotly Figures built from Runs (or arrays).

The dashboard, the notebooks and the HTML reports call these and nothing else draws. A figure whose data is
missing (a probe that did not run, a run that diverged before its first check) comes back as an empty figure with
a note saying why, never as an exception.

Every builder has a one-line caption (:data:`CAPTIONS`, read with :func:`caption`): what the figure shows and what
to look for. The dashboard prints it under each plot; notebooks and widgets read the same text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .errors import ConfigError
from .variant import VariantLayer, get_variant

__all__ = ["loss_curves", "spectra", "spectra_over_time", "effective_rank_over_time", "frequency_map",
           "allocation_heatmap", "gradient_norms", "landscape", "subspace_similarity", "comparison_table",
           "comparison_bars", "small_multiples", "delta_heatmap", "metric_over_time", "parameters_vs_quality",
           "variant_views", "location_trajectories", "CAPTIONS", "caption", "frequency_basis", "sharpness_text",
           "validation_metric", "metric_name", "map_coordinates", "mark_step", "setup_notebook"]

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=380,
              legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0))

#: builder name -> one line: what the figure shows, then what to look for in it
CAPTIONS: dict[str, str] = {
    "loss_curves": "Training loss (lines) and validation loss (dotted, a diamond at every evaluation) per step, "
                   "log scale. Look for the "
                   "validation loss turning up while training loss falls (overfitting) and for a dashed line "
                   "marking a run that diverged.",
    "validation_metric": "The task's metric on validation data (accuracy on digits and text, relative error on "
                         "synthetic tasks) at every evaluation. Look for where it stops improving: more steps will "
                         "not help past there.",
    "metric_over_time": "One line per run and module of a recorded metric over training steps. Look for the modules "
                        "that move first and those that never move.",
    "effective_rank_over_time": "Effective rank of each module's ΔW (exp of the entropy of its normalised singular "
                                "values) over training. A rising line means the update spreads over more directions; "
                                "a flat low line means it stays low-rank.",
    "subspace_similarity": "Overlap φ of the learned ΔW's top left singular subspace (its output directions) with the "
                           "true ΔW's (1 = the same directions, 0 = orthogonal). Look for how fast it climbs towards "
                           "1; the run also records the right side (input directions) and the minimum of the two.",
    "gradient_norms": "Norm of each module's adapter gradient per step, log scale. Look for modules whose gradients "
                      "vanish (they stopped learning) or spike (instability; try a smaller learning rate).",
    "spectra": "Singular values σᵢ of ΔW at one step, log scale; dashed: the true ΔW where the task knows it. Where "
               "the curve drops is the rank the update actually uses; compare it with the dashed truth.",
    "spectra_over_time": "Heatmap of log σᵢ(ΔW) per step: each row a probe step, each column a singular value. Look "
                         "for how many columns light up and when: the update's rank filling in over training.",
    "frequency_map": "Magnitude of ΔW's coefficients in a frequency basis (DCT, FFT or Walsh–Hadamard); circles: the "
                     "variant's own spectral locations. Energy in a few bright cells means ΔW is sparse in that basis.",
    "location_trajectories": "Where each learned spectral coefficient sat at every probe step, coloured by step. "
                             "Markers that drift then stop are locations searched and then frozen.",
    "allocation_heatmap": "Each row is a module, each column a probe step, the colour its rank (live gates). A row "
                          "that fades is a layer giving up ranks whose gates reached zero; rows that differ show "
                          "where the budget went.",
    "variant_views": "The variant's own per-module views (gates, masks, per-rank learning-rate scales, spectral "
                     "coefficients), one bar panel each. Bars at zero are pruned ranks or unused coefficients.",
    "delta_heatmap": "The weight update ΔW itself, output × input, red positive and blue negative. Stripes mean a "
                     "low-rank update; isolated bright cells a sparse one.",
    "landscape": "Loss around the trained adapter along random filter-normalised directions (1-D line or 2-D "
                 "contour; the red × is the trained point). A wide basin is a flat, robust minimum; a narrow one "
                 "is sharp.",
    "comparison_table": "One row per run: trainable parameters, final loss, the task's metric and time per step. "
                        "Compare the metric at similar parameter counts.",
    "comparison_bars": "Final metric per variant, mean over seeds with the standard deviation as error bars. "
                       "Overlapping error bars mean the seeds cannot tell those variants apart.",
    "parameters_vs_quality": "Trainable parameters (log scale) against the final metric, one point per variant. "
                             "The best trade-offs sit towards the top left.",
    "small_multiples": "One panel per run, on the same axes. Look for the panel that differs from the others.",
}
#: what ``small_multiples(kind=...)`` draws in each panel: its caption is that single-run figure's
_PANEL_OF = {"spectra": "spectra", "allocation": "allocation_heatmap", "dct": "frequency_map",
             "fft": "frequency_map", "wht": "frequency_map"}


#: plotly renderers for notebooks: the plotly mimetype (JupyterLab, VS Code draw it) and ``text/html`` with
#: plotly.js embedded once per notebook, offline (what nbconvert's HTML export and code hosts keep)
NOTEBOOK_RENDERERS = "plotly_mimetype+notebook"


def setup_notebook() -> str:
    """Make every figure shown in a notebook carry a ``text/html`` output as well as plotly's own mimetype, with
    plotly.js embedded once in the notebook (no CDN), so exported notebooks (nbconvert ``--to html``) show their
    plots. Call it once, in the notebook's first code cell; returns the renderer now in use."""
    import plotly.io as pio

    pio.renderers.default = NOTEBOOK_RENDERERS
    return pio.renderers.default


def caption(name: str, kind: str | None = None) -> str:
    """The caption of figure builder ``name`` (``kind`` picks the panel of ``small_multiples``).

    >>> caption("allocation_heatmap").startswith("Each row is a module")
    True
    """
    if name not in CAPTIONS:
        raise KeyError(f"no caption for figure {name!r}; captions exist for: {', '.join(CAPTIONS)}")
    if name == "small_multiples" and kind in _PANEL_OF:
        return f"One panel per run, side by side. {CAPTIONS[_PANEL_OF[kind]]}"
    return CAPTIONS[name]


def _layer_class(run):
    """The run's variant's layer class (the base ``VariantLayer``'s declarations for a variant not registered)."""
    try:
        return get_variant(run.variant).Layer
    except ConfigError:
        return VariantLayer


def frequency_basis(run) -> str:
    """The basis the run's variant indexes its spectral ``locations`` in (``VariantLayer.frequency_basis``); the
    default's (DCT) for a run whose variant is not registered in this process."""
    return _layer_class(run).frequency_basis


def _runs(runs) -> list:
    return list(runs) if isinstance(runs, (list, tuple)) else [runs]


def _labels(runs: list) -> list[str]:
    """Short unique labels: the variant, plus the seed or the lr where runs share a variant."""
    labels = [r.variant for r in runs]
    for key in ("seed", "lr"):
        if len(set(labels)) < len(labels):
            labels = [f"{r.variant} ({key} {r.config.get(key)})" for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.variant} [{r.id[-4:]}]" for r in runs]
    return labels


def _empty(title: str, why: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
    fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False), **LAYOUT)
    return fig


def _series(run, probe: str, key: str, module: str | None = None) -> pd.DataFrame:
    m = run.metrics
    sel = (m.probe == probe) & (m.key == key)
    if module is not None:
        sel &= m.module == module
    return m[sel]


def _modules(run, probe: str, name: str) -> list[str]:
    return run.snapshot_modules(probe, name)


def _np(t) -> list:
    return t.detach().cpu().float().tolist() if isinstance(t, torch.Tensor) else list(t)


# -- training curves ------------------------------------------------------------------------------------------

def loss_curves(runs, key: str = "loss", log_y: bool = True) -> go.Figure:
    """Training loss (lines) and validation loss (markers) of one or more runs; diverged runs are flagged."""
    runs = _runs(runs)
    title = "Loss" if key == "loss" else key
    if not runs or all(_series(r, "train", key).empty and _series(r, "eval", key).empty for r in runs):
        return _empty(title, "no losses recorded yet")
    fig = go.Figure()
    validation = []  # drawn after every training line, so each evaluation's marker stays visible on top
    for i, (run, label) in enumerate(zip(runs, _labels(runs))):
        color = PALETTE[i % len(PALETTE)]
        tr, ev = _series(run, "train", key), _series(run, "eval", key)
        if not tr.empty:
            fig.add_trace(go.Scatter(x=tr.step, y=tr.value, mode="lines", name=f"{label} train", opacity=0.75,
                                     line=dict(color=color, width=1.5), legendgroup=label))
        if not ev.empty:
            validation.append(go.Scatter(x=ev.step, y=ev.value, mode="markers+lines", name=f"{label} val",
                                         line=dict(color=color, dash="dot"), legendgroup=label,
                                         marker=dict(size=9, symbol="diamond", line=dict(color="white", width=1.5))))
        if run.status == "diverged":
            at = run.summary.get("diverged_at_step", tr.step.max() if not tr.empty else 0)
            fig.add_vline(x=at, line=dict(color=color, dash="dash"))
            fig.add_annotation(x=at, y=1, yref="paper", text=f"{label} diverged", showarrow=False,
                               font=dict(color=color), yanchor="bottom")
    for trace in validation:
        fig.add_trace(trace)
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=key, **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def mark_step(fig: go.Figure, step: int | None) -> None:
    """Mark the selected ``step`` on ``fig`` (a figure over training steps) with a vertical line, in place; nothing
    for an empty figure or no step."""
    if step is None or not fig.data:
        return
    fig.add_vline(x=step, line=dict(color="#444", dash="dot", width=1.5))
    fig.add_annotation(x=step, y=1, yref="paper", text=f"step {step}", showarrow=False, yanchor="bottom",
                       font=dict(size=11, color="#444"), name="selected step")


def metric_name(run) -> str | None:
    """The task's metric of a run (``summary['metric']`` once finished; while it trains, the validation record that
    is not the loss), or None before the first evaluation."""
    name = run.summary.get("metric") or run.config.get("metric")
    if name:
        return name
    keys = [k for k in dict.fromkeys(_series_of(run, "eval").key) if k != "loss"]
    return keys[0] if keys else None


def _series_of(run, probe: str) -> pd.DataFrame:
    m = run.metrics
    return m[m.probe == probe]


def validation_metric(runs) -> go.Figure:
    """The task's metric (accuracy on digits and text, rel_error on synthetic tasks) on validation data at every
    evaluation of one or more runs."""
    runs = _runs(runs)
    fig = go.Figure()
    names = []
    for i, (run, label) in enumerate(zip(runs, _labels(runs))):
        name = metric_name(run)
        ev = _series(run, "eval", name) if name else None
        if ev is None or ev.empty:
            continue
        names.append(name)
        fig.add_trace(go.Scatter(x=ev.step, y=ev.value, mode="markers+lines", name=f"{label} {name}",
                                 line=dict(color=PALETTE[i % len(PALETTE)]), marker=dict(size=7)))
    if not fig.data:
        return _empty("Validation metric", "no evaluation recorded yet")
    shown = " / ".join(dict.fromkeys(names))
    fig.update_layout(title=f"{shown} on validation data", xaxis_title="step", yaxis_title=shown, **LAYOUT)
    return fig


def metric_over_time(runs, probe: str, key: str, title: str | None = None, log_y: bool = False) -> go.Figure:
    """One line per (run, module) of any recorded metric."""
    runs = _runs(runs)
    title = title or f"{key} ({probe})"
    fig = go.Figure()
    for i, (run, label) in enumerate(zip(runs, _labels(runs))):
        df = _series(run, probe, key)
        for j, (module, part) in enumerate(df.groupby("module", sort=False)):
            name = label if not module else f"{label} · {module}"
            fig.add_trace(go.Scatter(x=part.step, y=part.value, mode="lines+markers", name=name,
                                     line=dict(color=PALETTE[i % len(PALETTE)], dash=["solid", "dot", "dash",
                                                                                      "dashdot"][j % 4]),
                                     marker=dict(size=4)))
    if not fig.data:
        return _empty(title, f"no '{key}' records from the {probe} probe")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=key, **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def effective_rank_over_time(runs) -> go.Figure:
    return metric_over_time(runs, "spectra", "effective_rank", "Effective rank of ΔW (Roy & Vetterli)")


def subspace_similarity(runs) -> go.Figure:
    fig = metric_over_time(runs, "spectra", "subspace_similarity",
                           "Subspace similarity φ to the true ΔW: left singular subspaces (1 = same output directions)")
    fig.update_yaxes(range=[0, 1.05])
    return fig


def gradient_norms(runs, per_tensor: bool = False) -> go.Figure:
    """Per-module gradient norms of the adapter tensors over training (log scale)."""
    runs = _runs(runs)
    if not per_tensor:
        return metric_over_time(runs, "gradients", "grad_norm", "Gradient norm per module", log_y=True)
    fig = go.Figure()
    for run, label in zip(runs, _labels(runs)):
        m = run.metrics
        df = m[(m.probe == "gradients") & m.key.str.startswith("grad_norm/")]
        for (module, key), part in df.groupby(["module", "key"], sort=False):
            fig.add_trace(go.Scatter(x=part.step, y=part.value, mode="lines",
                                     name=f"{label} · {module} · {key.split('/', 1)[1]}"))
    if not fig.data:
        return _empty("Gradient norm per tensor", "no gradient records (the gradients probe did not run)")
    fig.update_layout(title="Gradient norm per tensor", xaxis_title="step", yaxis_title="‖∇‖", **LAYOUT)
    fig.update_yaxes(type="log")
    return fig


# -- spectra ----------------------------------------------------------------------------------------------------

def spectra(run, module: str | None = None, step: int | None = None, top: int = 64) -> go.Figure:
    """Singular values of ΔW at ``step`` (default: the last), with the true ΔW's where the task knows it."""
    modules = _modules(run, "spectra", "singular_values")
    if not modules:
        return _empty("Singular values of ΔW", "no spectra recorded (the spectra probe did not run)")
    module = module or modules[0]
    s = run.snapshot("spectra", "singular_values", module, step)
    if s is None:
        return _empty("Singular values of ΔW", f"no spectrum for {module} at step {step}")
    at = run.snapshot_steps("spectra", "singular_values", module)
    shown = max([t for t in at if step is None or t <= step], default=0)
    fig = go.Figure()
    s = s[:top]
    fig.add_trace(go.Scatter(x=list(range(1, len(s) + 1)), y=_np(s.clamp_min(1e-12)), mode="lines+markers",
                             name=f"{run.variant} ΔW"))
    ref = run.snapshot("spectra", "singular_values_reference", module)
    if ref is not None:
        ref = ref[:top]
        fig.add_trace(go.Scatter(x=list(range(1, len(ref) + 1)), y=_np(ref.clamp_min(1e-12)), mode="lines",
                                 name="true ΔW", line=dict(dash="dash", color="black")))
    fig.update_layout(title=f"Singular values of ΔW · {module} · step {shown}", xaxis_title="index i",
                      yaxis_title="σᵢ", **LAYOUT)
    fig.update_yaxes(type="log")
    return fig


def spectra_over_time(run, module: str | None = None, top: int = 32) -> go.Figure:
    """Heatmap of log σᵢ(ΔW) over training: how the update's spectrum fills in."""
    modules = _modules(run, "spectra", "singular_values")
    if not modules:
        return _empty("Spectrum over training", "no spectra recorded")
    module = module or modules[0]
    steps = run.snapshot_steps("spectra", "singular_values", module)
    rows = [run.snapshot("spectra", "singular_values", module, t)[:top] for t in steps]
    width = max(len(r) for r in rows)
    z = [[math.log10(max(v, 1e-12)) for v in _np(r)] + [None] * (width - len(r)) for r in rows]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(1, width + 1)), y=steps, colorscale="Viridis",
                               colorbar=dict(title="log₁₀ σ")))
    fig.update_layout(title=f"Spectrum of ΔW over training · {module}", xaxis_title="index i", yaxis_title="step",
                      **LAYOUT)
    return fig


def small_multiples(runs, kind: str = "spectra", module: str | None = None, step: int | None = None) -> go.Figure:
    """One panel per run: ``kind`` is 'spectra' (σ of ΔW, log scale), 'allocation' (rank per module × step) or
    'dct' / 'fft' / 'wht' maps."""
    runs = _runs(runs)
    if not runs:
        return _empty("Side by side", "no runs selected")
    labels = _labels(runs)
    cols = min(len(runs), 4)
    rows = math.ceil(len(runs) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=labels, horizontal_spacing=0.06, vertical_spacing=0.12)
    for i, run in enumerate(runs):
        r, c = i // cols + 1, i % cols + 1
        if kind == "allocation":
            df = _series(run, "ranks", "rank")
            df = df[df.module != ""]
            if not df.empty:
                t = df.pivot_table(index="module", columns="step", values="value", sort=False)
                fig.add_trace(go.Heatmap(z=t.values.tolist(), x=list(t.columns), y=list(t.index), colorscale="Blues",
                                         showscale=i == 0, colorbar=dict(title="rank")), r, c)
            continue
        probe, name = ("spectra", "singular_values") if kind == "spectra" else ("frequency", kind)
        mods = _modules(run, probe, name)
        mod = module if module in mods else (mods[0] if mods else None)
        x = run.snapshot(probe, name, mod, step) if mod else None
        if x is None:
            continue
        if kind == "spectra":
            fig.add_trace(go.Scatter(y=_np(x[:64].clamp_min(1e-12)), mode="lines+markers", showlegend=False,
                                     marker=dict(size=4), line=dict(color=PALETTE[i % len(PALETTE)])), r, c)
            ref = run.snapshot("spectra", "singular_values_reference", mod)
            if ref is not None:
                fig.add_trace(go.Scatter(y=_np(ref[:64].clamp_min(1e-12)), mode="lines", showlegend=False,
                                         line=dict(color="black", dash="dash")), r, c)
            fig.update_yaxes(type="log", row=r, col=c)
        else:
            fig.add_trace(go.Heatmap(z=x.tolist(), colorscale="Magma", showscale=False), r, c)
            fig.update_yaxes(autorange="reversed", row=r, col=c)
    if not fig.data:
        return _empty("Side by side", f"no '{kind}' snapshots in these runs")
    what = {"spectra": "σᵢ(ΔW) (dashed: truth)", "allocation": "Rank per module over training"}.get(
        kind, f"|{kind.upper()}(ΔW)|")
    fig.update_layout(title=f"{what} side by side" + (f" · {module}" if module else ""),
                      **{**LAYOUT, "height": 300 * rows + 80})
    return fig


# -- frequency and allocation ----------------------------------------------------------------------------------

#: frequency maps the probe stores ``fftshift``-ed (zero frequency at the centre; ``probes.frequency.fft_map``)
SHIFTED_BASES = ("fft",)
#: the side above which the probe max-pools its maps (``probes.frequency.MAX_SIDE``)
POOLED_SIDE = 128


def _full_shape(run, module: str, pooled: tuple[int, int], locations: torch.Tensor) -> tuple[int, int]:
    """The unpooled (rows, cols) of a module's map. A side under ``POOLED_SIDE`` was not pooled; the probe records
    only the larger side of a pooled map (``map_pooled_from``), and the spectrum's length is the smaller one: when
    both stored sides are ``POOLED_SIDE`` the side whose locations reach past the smaller side is the larger."""
    rows, cols = pooled
    big = _series(run, "frequency", "map_pooled_from", module)
    if big.empty or max(rows, cols) < POOLED_SIDE:
        return rows, cols
    big = int(big.value.iloc[-1])
    if rows < POOLED_SIDE:
        return rows, big
    if cols < POOLED_SIDE:
        return big, cols
    s = run.snapshot("spectra", "singular_values", module)
    small = len(s) if s is not None else big
    if small >= big:
        return big, big
    row_reach = float(locations[:, 0].max()) if len(locations) else 0.0
    return (big, small) if row_reach >= small else (small, big)


def map_coordinates(run, module: str, kind: str, locations: torch.Tensor, pooled: tuple[int, int]) -> torch.Tensor:
    """(n, 2) (row, col) positions of a variant's ``locations`` on the stored map of basis ``kind``: shifted as the
    probe shifts that map (FFT: entry j of an m-long axis sits at (j + m//2) mod m) and scaled into a pooled map's
    cells (index j of m → ⌊j · s / m⌋ of s, the adaptive max-pool bin that holds it)."""
    loc = locations.reshape(-1, 2).float() if locations.dim() == 2 and locations.shape[-1] == 2 else \
        locations.reshape(2, -1).t().float()
    m, n = _full_shape(run, module, pooled, loc)
    out = loc.clone()
    if kind in SHIFTED_BASES:
        out[:, 0] = (out[:, 0] + m // 2) % m
        out[:, 1] = (out[:, 1] + n // 2) % n
    if (m, n) != tuple(pooled):
        out[:, 0] = torch.floor(out[:, 0] * pooled[0] / m)
        out[:, 1] = torch.floor(out[:, 1] * pooled[1] / n)
    return out


def frequency_map(run, module: str | None = None, kind: str = "dct", step: int | None = None) -> go.Figure:
    """|DCT| / |FFT| / |WHT| of ΔW, with the variant's spectral locations overlaid on the map of the basis it
    declares (``frequency_basis``): "learned locations" where they move in training (``learned_locations``), "fixed
    entries" where they do not. A one-sided variant's map (``frequency_sides == "input"``, recorded by the probe as
    ``<kind>_input_side_only``) has channels as rows."""
    title = f"|{kind.upper()}(ΔW)|"
    modules = _modules(run, "frequency", kind)
    if not modules:
        return _empty(title, "no frequency maps recorded (the frequency probe did not run)")
    module = module or modules[0]
    z = run.snapshot("frequency", kind, module, step)
    if z is None:
        return _empty(title, f"no map for {module}")
    layer = _layer_class(run)
    fig = go.Figure(go.Heatmap(z=z.tolist(), colorscale="Magma", colorbar=dict(title="|coef|")))
    loc = run.snapshot("frequency", "locations", module, step)
    if loc is not None and loc.numel() and kind == frequency_basis(run):
        at = map_coordinates(run, module, kind, loc, tuple(z.shape))
        fig.add_trace(go.Scatter(x=_np(at[:, 1]), y=_np(at[:, 0]), mode="markers",
                                 name="learned locations" if layer.learned_locations else "fixed entries",
                                 marker=dict(symbol="circle-open", size=9, color="cyan", line=dict(width=2))))
    # a one-sided map (the probe transformed only the input side, as the variant declares) has channels as rows
    one_sided = (layer.frequency_sides == "input" and kind == frequency_basis(run)
                 and not _series(run, "frequency", f"{kind}_input_side_only", module).empty)
    if one_sided:
        title = f"|ΔW · {kind.upper()} along the input|"
    pooled_from = _series(run, "frequency", "map_pooled_from", module)
    if not pooled_from.empty:
        title += f" (max-pooled from {int(pooled_from.value.iloc[-1])} per side)"
    fig.update_layout(title=f"{title} · {module}", xaxis_title="input frequency",
                      yaxis_title="output channel" if one_sided else "output frequency", **LAYOUT)
    fig.update_yaxes(autorange="reversed")
    return fig


def location_trajectories(run, module: str | None = None) -> go.Figure:
    """Where a learned-location variant's spectral coefficients sat at every probe step: one marker per coefficient
    per step, coloured by step, on the grid of the variant's frequency basis."""
    modules = _modules(run, "frequency", "locations")
    if not modules:
        return _empty("Location trajectories", f"{run.variant} records no spectral locations")
    module = module or modules[0]
    steps = run.snapshot_steps("frequency", "locations", module)
    xs, ys, cs = [], [], []
    for t in steps:
        loc = run.snapshot("frequency", "locations", module, t)
        ys += _np(loc[:, 0])
        xs += _np(loc[:, 1])
        cs += [t] * len(loc)
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers", marker=dict(color=cs, colorscale="Viridis", size=6,
                                                                      colorbar=dict(title="step"), opacity=0.7)))
    fig.update_layout(title=f"Learned spectral locations over training · {module}", xaxis_title="input frequency",
                      yaxis_title="output frequency", **LAYOUT)
    fig.update_yaxes(autorange="reversed")
    return fig


def allocation_heatmap(run, key: str = "rank") -> go.Figure:
    """Module × step heatmap of the allocated rank (or any per-module ``ranks`` record)."""
    df = _series(run, "ranks", key)
    df = df[df.module != ""]
    if df.empty:
        return _empty("Allocation", f"no '{key}' records (the ranks probe did not run)")
    table = df.pivot_table(index="module", columns="step", values="value", sort=False)
    fig = go.Figure(go.Heatmap(z=table.values.tolist(), x=list(table.columns), y=list(table.index),
                               colorscale="Blues", colorbar=dict(title=key)))
    fig.update_layout(title=f"{key} per module over training · {run.variant}", xaxis_title="step",
                      yaxis_title="module", **{**LAYOUT, "height": max(300, 28 * len(table) + 140)})
    return fig


def variant_views(run, module: str | None = None, step: int | None = None) -> go.Figure:
    """The variant's own per-module views recorded by the probes: gates, masks, per-rank learning-rate scales,
    spectral coefficients (one bar panel each)."""
    views = [(p, n) for p, n in (("ranks", "gates"), ("ranks", "mask"), ("ranks", "lr_scale"),
                                 ("frequency", "coefficients")) if run.snapshot_modules(p, n)]
    if not views:
        return _empty("Variant views", f"{run.variant} reports no gates, masks or coefficients")
    modules = run.snapshot_modules(*views[0])
    module = module if module in modules else modules[0]
    fig = make_subplots(rows=1, cols=len(views), subplot_titles=[n for _, n in views])
    for i, (probe, name) in enumerate(views):
        x = run.snapshot(probe, name, module, step)
        if x is not None:
            fig.add_trace(go.Bar(y=_np(x.flatten()), showlegend=False, marker_color=PALETTE[i % len(PALETTE)]),
                          1, i + 1)
    fig.update_layout(title=f"{run.variant}'s own views · {module}", **LAYOUT)
    return fig


def delta_heatmap(delta, title: str = "ΔW") -> go.Figure:
    """A weight update (out × in) as a diverging heatmap."""
    d = delta.detach().float().cpu() if isinstance(delta, torch.Tensor) else torch.as_tensor(delta)
    lim = float(d.abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(z=d.tolist(), colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim))
    fig.update_layout(title=f"{title} ({d.shape[0]}×{d.shape[1]})", xaxis_title="input", yaxis_title="output",
                      **LAYOUT)
    fig.update_yaxes(autorange="reversed")
    return fig


# -- landscape --------------------------------------------------------------------------------------------------

def sharpness_text(result: dict, short: bool = False) -> str:
    """The landscape's sharpness as a phrase naming its definition: Keskar et al.'s (2017) ε-sharpness, in %."""
    eps = result.get("epsilon")
    if eps is None:
        return f"sharpness {result['sharpness']:.3g}"
    text = f"ε-sharpness {result['sharpness']:.3g}% (ε = {eps:g}"
    return text + ")" if short else (text + "; Keskar et al. 2017: the largest loss rise in the box "
                                            "|δᵢ| ≤ ε(|wᵢ| + 1) around the trained weights, over 1 + L)")


def landscape(result: dict, surface: bool = False) -> go.Figure:
    """A 1-D slice (with the init→trained interpolation when present) or a 2-D contour / surface."""
    if not result or "loss" not in result:
        return _empty("Loss landscape", "no landscape computed yet")
    mode = {"adapter": "adapter space", "delta": "ΔW space, normalised against ΔW",
            "merged": "merged weights, normalised against W0 + ΔW"}.get(result.get("mode"), str(result.get("mode")))
    if result["dims"] == 1:
        fig = go.Figure(go.Scatter(x=_np(result["alphas"]), y=_np(result["loss"]), mode="lines+markers",
                                   name="random direction"))
        if "interpolation" in result:
            fig.add_trace(go.Scatter(x=_np(result["alphas_interp"]), y=_np(result["interpolation"]),
                                     mode="lines", name="init → trained (α from 0 to 1)"))
        fig.update_layout(title=f"Loss along a filter-normalised direction ({mode}); "
                                f"{sharpness_text(result, short=True)}", xaxis_title="α", yaxis_title="loss", **LAYOUT)
        return fig
    z = result["loss"].tolist()
    a, b = _np(result["alphas"]), _np(result["betas"])
    trace = (go.Surface(z=z, x=a, y=b, colorscale="Viridis") if surface else
             go.Contour(z=z, x=a, y=b, colorscale="Viridis", contours=dict(showlabels=True),
                        colorbar=dict(title="loss")))
    fig = go.Figure(trace)
    if not surface:
        fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers", name="trained", marker=dict(symbol="x", size=12,
                                                                                          color="red")))
    fig.update_layout(title=f"2-D loss landscape ({mode}, filter-normalised directions)", xaxis_title="α",
                      yaxis_title="β", **{**LAYOUT, "height": 480})
    return fig


# -- comparisons ------------------------------------------------------------------------------------------------

def comparison_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> go.Figure:
    """A comparison (or run list) DataFrame as a table figure."""
    if df is None or len(df) == 0:
        return _empty("Results", "no results yet")
    columns = list(columns or [c for c in ("variant", "seed", "lr", "trainable_params", "final_loss",
                                           "metric_value", "seconds_per_step", "status") if c in df.columns])

    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    fig = go.Figure(go.Table(header=dict(values=columns, fill_color="#e8eef7", align="left"),
                             cells=dict(values=[[fmt(v) for v in df[c]] for c in columns], align="left")))
    fig.update_layout(title="Results", **{**LAYOUT, "height": 150 + 30 * (len(df) + 1)})
    return fig


def comparison_bars(df: pd.DataFrame, metric: str = "metric_value", error: str | None = None) -> go.Figure:
    """Mean of ``metric`` per variant over seeds, with the standard deviation as error bars."""
    if df is None or len(df) == 0 or metric not in df.columns:
        return _empty(metric, "no results yet")
    ok = df[df["status"] == "completed"] if "status" in df.columns else df
    if ok.empty:
        return _empty(metric, "no completed runs")
    g = ok.groupby("variant", sort=False)[metric]
    mean, std = g.mean(), g.std(ddof=0).fillna(0)
    label = ok["metric"].iloc[0] if metric == "metric_value" and "metric" in ok.columns else metric
    fig = go.Figure(go.Bar(x=list(mean.index), y=mean.values, error_y=dict(type="data", array=std.values),
                           marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(mean))]))
    fig.update_layout(title=f"{label} per variant (mean ± std over seeds)", yaxis_title=label, **LAYOUT)
    return fig


def parameters_vs_quality(df: pd.DataFrame, metric: str = "metric_value") -> go.Figure:
    """Trainable parameters (log x) against the final metric, one point per variant (mean over seeds)."""
    if df is None or len(df) == 0:
        return _empty("Parameters vs quality", "no results yet")
    ok = df[df["status"] == "completed"] if "status" in df.columns else df
    g = ok.groupby("variant", sort=False)[["trainable_params", metric]].mean()
    fig = go.Figure(go.Scatter(x=g.trainable_params, y=g[metric], mode="markers+text", text=list(g.index),
                               textposition="top center", marker=dict(size=11)))
    label = ok["metric"].iloc[0] if "metric" in ok.columns else metric
    fig.update_layout(title="Trainable parameters vs quality", xaxis_title="trainable parameters",
                      yaxis_title=label, **LAYOUT)
    fig.update_xaxes(type="log")
    return fig

