"""Every figure of the project, as plotly Figures built from Runs (or arrays).

The dashboard, the notebooks and the HTML reports call these and nothing else draws. A figure whose data is
missing (a probe that did not run, a run that diverged before its first check) comes back as an empty figure with
a note saying why, never as an exception.

Every builder has a one-line caption (:data:`CAPTIONS`, read with :func:`caption`): what the figure shows and what
to look for. The dashboard prints it under each plot; notebooks and widgets read the same text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from .errors import ConfigError
from .variant import VariantLayer, get_variant

__all__ = ["loss_curves", "spectra", "spectra_over_time", "effective_rank_over_time", "frequency_map",
           "allocation_heatmap", "bit_allocation", "gradient_norms", "landscape", "subspace_similarity",
           "comparison_table", "comparison_bars", "small_multiples", "delta_heatmap", "metric_over_time",
           "parameters_vs_quality", "variant_views", "location_trajectories", "CAPTIONS", "caption", "frequency_basis",
           "sharpness_text", "validation_metric", "metric_name", "map_coordinates", "mark_step", "setup_notebook",
           "short_name", "short_names", "layer_index", "fmt_number", "allocation_summary", "true_ranks",
           "magnitude_view", "lr_sweep", "results_frame", "run_setting", "metric_column", "set_y_scale", "smoothed",
           "claim_seeds"]

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]
#: plotly_white with numbers as people read them: powers of ten (10⁻⁵, never SI's "10μ") on every axis, and four
#: significant digits when a value is hovered
TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
for _axis in (TEMPLATE.layout.xaxis, TEMPLATE.layout.yaxis):
    _axis.exponentformat = "power"
TEMPLATE.layout.yaxis.hoverformat = ".4g"
#: the legend sits beside the plot, top-aligned, never over the title (a horizontal legend at y = 1.02 covered the
#: title of almost every figure as soon as it wrapped onto a second line); plotly widens the right margin for it
LEGEND = dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top", font=dict(size=11),
              tracegroupgap=4)
TEMPLATE.layout.title.update(x=0.01, xanchor="left")
#: where the legend goes in a figure whose right-hand side holds a colour bar
BELOW = dict(orientation="h", x=0, xanchor="left", y=-0.18, yanchor="top", font=dict(size=11))
LAYOUT = dict(template=TEMPLATE, margin=dict(l=60, r=20, t=60, b=50), height=380, legend=LEGEND)
#: a grid of panels with their own titles: room between the figure's title and theirs
SUBPLOTS = {**LAYOUT, "margin": {**LAYOUT["margin"], "t": 85}}
#: the markers a frequency view draws at most by default (the strongest coefficients by magnitude)
TOP_LOCATIONS = 200
#: singular values are drawn down to this fraction of σ₁ (exact zeros sit on that floor)
SPECTRUM_FLOOR = 1e-6

#: builder name -> one line: what the figure shows, then what to look for in it
CAPTIONS: dict[str, str] = {
    "loss_curves": "Training loss (lines) and validation loss (dotted, a diamond at every evaluation) per step, "
                   "log scale; runs of one variant (its seeds) as their mean with a ± sd band. Look for the "
                   "validation loss turning up while training loss falls (overfitting), for bands that overlap "
                   "(the seeds cannot tell the variants apart) and for a dashed line marking a run that diverged.",
    "validation_metric": "The task's metric on validation data (accuracy on digits and text, relative error on "
                         "synthetic tasks) at every evaluation. Look for where it stops improving: more steps will "
                         "not help past there.",
    "metric_over_time": "One line per run and module of a recorded metric over training steps (one colour per layer "
                        "for a single run). Look for the modules that move first and those that never move.",
    "effective_rank_over_time": "Effective rank of each module's ΔW (exp of the entropy of its normalised singular "
                                "values) over training, one colour per layer. A rising line means the update spreads "
                                "over more directions; a flat low line means it stays low-rank.",
    "subspace_similarity": "Overlap φ of the learned ΔW's top left singular subspace (its output directions) with the "
                           "true ΔW's (1 = the same directions, 0 = orthogonal). Look for how fast it climbs towards "
                           "1; the run also records the right side (input directions) and the minimum of the two.",
    "gradient_norms": "Norm of each module's adapter gradient per step, log scale, one colour per layer. Look for "
                      "modules whose gradients vanish (they stopped learning) or spike (instability; try a smaller "
                      "learning rate).",
    "spectra": "Singular values σᵢ of ΔW of one module at one step, log scale down to 10⁻⁶·σ₁ (smaller values and "
               "exact zeros sit on that floor); dashed: the true ΔW where the task knows it. Where the curve drops is "
               "the rank the update actually uses; compare it with the dashed truth.",
    "spectra_over_time": "Heatmap of log σᵢ(ΔW) per step, from 10⁻⁶·σ₁ to σ₁: each row a probe step, each column a "
                         "singular value. Look for how many columns light up and when: the update's rank filling in "
                         "over training.",
    "frequency_map": "Magnitude of ΔW's coefficients in a frequency basis (DCT, FFT or Walsh–Hadamard); circles: the "
                     "variant's own spectral locations, the strongest by |coefficient|. Energy in a few bright cells "
                     "means ΔW is sparse in that basis; circles on bright cells mean the variant put its "
                     "coefficients where the energy is.",
    "location_trajectories": "Paths of the learned spectral locations that moved in training, from a hollow marker "
                             "(start) to a filled one (end), the strongest by |coefficient|; grey dots never moved. "
                             "Short paths that stop are locations searched and then frozen.",
    "allocation_heatmap": "Each row is a module, each column a probe step, the colour its rank (live gates; white is "
                          "exactly zero); the true ranks beside it where the task knows them. A row that fades is a "
                          "layer giving up ranks whose gates reached zero; rows that differ show where the budget "
                          "went. A variant that does not allocate shows one line: its fixed rank.",
    "bit_allocation": "Bayesian-LoRA's quantization gates: each module's active rank beside the bits it learned for "
                      "A and B (the top level before the first closed gate), and the adapter's bit operations per "
                      "token. A matrix that keeps few bits is one the prior could quantize without costing loss.",
    "variant_views": "The variant's own per-module views (gates, masks, per-rank learning-rate scales, spectral "
                     "coefficients: the largest by magnitude), one bar panel each. Bars at zero are pruned ranks or "
                     "unused coefficients.",
    "delta_heatmap": "The weight update ΔW itself, output × input, red positive and blue negative. Stripes mean a "
                     "low-rank update; isolated bright cells a sparse one.",
    "landscape": "Loss around the trained adapter along random filter-normalised directions (1-D line or 2-D "
                 "contour; the red × is the trained point). A wide basin is a flat, robust minimum; a narrow one "
                 "is sharp.",
    "comparison_table": "One row per run: trainable parameters, final loss, the task's metric (by its name) and time "
                        "per step. Compare the metric at similar parameter counts.",
    "comparison_bars": "Final metric per variant, mean over seeds with the standard deviation as error bars. "
                       "Overlapping error bars mean the seeds cannot tell those variants apart.",
    "parameters_vs_quality": "Trainable parameters (log scale) against the final metric, one point per variant. "
                             "The best trade-offs sit towards the top left.",
    "small_multiples": "One panel per run, on the same axes and one shared colour scale. Look for the panel that "
                       "differs from the others.",
    "lr_sweep": "The learning-rate sweep, apart from the seed runs: final metric against learning rate, one line per "
                "variant, the chosen rate ringed. A chosen rate at the end of its line means the sweep should go "
                "further that way.",
    "magnitude_view": "DoRA's decomposition per output row: the learned magnitude m against the row norm ‖W0‖ it "
                      "started from (points on the diagonal did not change), and the magnitude change against the "
                      "direction change. Look for rows whose magnitude moved while their direction stayed (DoRA's "
                      "claim), or both moving together (as LoRA does).",
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
    """Short unique labels: the variant alone, or ``variant · lr=…, seed=…`` (:func:`run_setting`) where runs share
    a variant; the run id's tail only where even those agree."""
    labels = [r.variant for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.variant} · {run_setting(r)}" if labels.count(r.variant) > 1 else r.variant for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{label} [{r.id[-4:]}]" for label, r in zip(labels, runs)]
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


# -- names and numbers -------------------------------------------------------------------------------------------

#: the last part of a module name -> its short form (BERT/MiniLM, Llama/OPT, GPT-2 spellings)
_LEAF = {"query": "q", "key": "k", "value": "v", "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
         "out_proj": "o", "gate_proj": "gate", "up_proj": "up", "down_proj": "down", "c_attn": "qkv",
         "c_proj": "proj", "c_fc": "fc"}
#: a ``dense`` leaf named by the part above it (BERT: attention.output.dense, intermediate.dense, output.dense)
_DENSE = {("attention", "output"): "o", ("intermediate",): "up", ("output",): "down"}
#: parts that only say where a module sits, dropped from the short form
_CONTAINERS = {"self", "attention", "attn", "self_attn", "mlp", "module", "base_model", "model", "layer", "layers"}


def layer_index(module: str) -> int | None:
    """The block a module sits in: the first all-digit part of its name (``encoder.layer.3.attention.self.query``
    → 3), or None (``head``)."""
    return next((int(p) for p in module.split(".") if p.isdigit()), None)


def short_name(module: str) -> str:
    """A module's name short enough for a legend or a heatmap row: ``L<block>.<what>``, e.g.
    ``encoder.encoder.layer.0.attention.self.query`` → ``L0.q``, ``blocks.1.mlp.fc2`` → ``L1.fc2``, ``layers.3`` →
    ``L3``; a bare index (``0``) and names without a block (``head``) stay as they are.

    >>> short_name("encoder.encoder.layer.0.attention.output.dense")
    'L0.o'
    """
    parts = module.split(".")
    idx = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if idx is None or len(parts) == 1:
        return module
    rest = parts[idx + 1:]
    head = f"L{parts[idx]}"
    if not rest:
        return head
    leaf = rest[-1]
    if leaf in _LEAF:
        tail = _LEAF[leaf]
    elif leaf == "dense" and tuple(rest[:-1]) in _DENSE:
        tail = _DENSE[tuple(rest[:-1])]
    else:
        tail = ".".join(p for p in rest if p not in _CONTAINERS) or leaf
    return f"{head}.{tail}"


def short_names(modules) -> dict[str, str]:
    """:func:`short_name` of each module, unique within ``modules``: names whose short forms collide (an encoder's
    and a decoder's ``L0.q``) keep their full names."""
    modules = list(dict.fromkeys(modules))
    short = {m: short_name(m) for m in modules}
    counts = pd.Series(list(short.values())).value_counts()
    return {m: (s if counts[s] == 1 else m) for m, s in short.items()}


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def fmt_number(x, digits: int = 4) -> str:
    """A number as a title or a header shows it: ``digits`` significant digits, and a power of ten outside
    [10⁻³, 10⁴) (``9.645427984400854e-06`` → ``9.645×10⁻⁶``; never an SI prefix such as ``10μ``)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e4):
        return f"{int(x)}"
    if not math.isfinite(x):
        return str(x)
    exponent = math.floor(math.log10(abs(x)))
    if -3 <= exponent < 4:
        return f"{x:.{digits}g}"
    mantissa = f"{x / 10 ** exponent:.{digits}g}"
    if float(mantissa) == 10:  # 9.99995 rounds up
        mantissa, exponent = "1", exponent + 1
    return f"{mantissa}×10{str(exponent).translate(_SUPERSCRIPT)}"


def _log_axis(fig: go.Figure, values, axis: str = "y", **where) -> None:
    """Make an axis logarithmic with ticks people read: one labelled tick per power of ten (every n-th over more
    than eight decades), written 10⁻⁴, and no labelled minor ticks (plotly's default labels the 2s and 5s between
    decades and writes 10⁻⁴ as 100μ). An axis spanning less than a decade gets a few round values instead."""
    update = fig.update_yaxes if axis == "y" else fig.update_xaxes
    v = [float(x) for x in values if x is not None and math.isfinite(float(x)) and float(x) > 0]
    settings = dict(type="log", exponentformat="power", showexponent="all", minor=dict(showgrid=False, ticks=""))
    if not v:
        update(**settings, **where)
        return
    lo, hi = math.log10(min(v)), math.log10(max(v))
    if math.floor(hi) - math.ceil(lo) >= 1:  # two or more powers of ten inside the range
        update(**settings, tick0=0, dtick=max(1, math.ceil((hi - lo) / 8)), **where)
        return
    ticks = _round_ticks(10 ** lo, 10 ** hi)
    update(**settings, tickvals=ticks, ticktext=[fmt_number(t) for t in ticks], **where)


def _round_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    power = 10 ** math.floor(math.log10(raw))
    step = next(f * power for f in (1, 2, 5, 10) if f * power >= raw)
    first = math.ceil(lo / step) * step
    ticks = [first + i * step for i in range(int((hi - first) / step) + 1)]
    ticks = [float(f"{t:.12g}") for t in ticks if t > 0]
    return ticks or [lo]


def run_setting(run) -> str:
    """``lr=0.01, seed=1``: what tells the runs of one variant apart in a comparison."""
    lr = run.config.get("lr")
    seed = run.config.get("seed")
    return f"lr={fmt_number(lr)}, seed={seed}" if isinstance(lr, (int, float)) else f"seed={seed}"


def _layer_colours(modules) -> dict[str, str]:
    """One colour per block (``layer_index``), in order along a sequential scale, so the lines of one layer share a
    colour and depth reads as a gradient; modules outside a block get the palette's colours."""
    layers = sorted({i for i in map(layer_index, modules) if i is not None})
    scale = dict(zip(layers, sample_colorscale("Plasma", [0.85 * k / max(1, len(layers) - 1)
                                                         for k in range(len(layers))])))
    other = iter(PALETTE)
    out = {}
    for m in modules:
        i = layer_index(m)
        out[m] = scale[i] if i is not None and len(layers) > 1 else next(other, "#444")
    return out


# -- training curves ------------------------------------------------------------------------------------------

def smoothed(values, weight: float) -> list:
    """TensorBoard's smoothing of a training curve: an exponential moving average with ``weight`` in [0, 1),
    debiased (divided by 1 − weight^t, so the first points are not pulled toward zero); NaN/inf/None kept as they
    are."""
    out, last, n = [], 0.0, 0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(v)
            continue
        n += 1
        last = weight * last + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def loss_curves(runs, key: str = "loss", log_y: bool = True, band: bool | None = None,
                smoothing: float = 0.0) -> go.Figure:
    """Training loss (lines) and validation loss (markers) of one or more runs; diverged runs are flagged.

    ``band`` (default: whenever two runs differ only in their seed) draws one line per group of such runs (a
    variant's seeds: :func:`_seed_groups`), their mean with a ± one standard deviation band, and each run as a thin
    line labelled ``lr=…, seed=…`` (hidden from the legend, shown on hover): two legend entries per variant instead
    of two per run.

    ``smoothing`` in [0, 0.99] smooths the training lines (:func:`smoothed`, TensorBoard's debiased EMA; a band is
    the spread of the smoothed runs), with the raw line kept faint behind; validation points are never smoothed."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing <= 0.99:
        raise ConfigError(f"loss_curves: smoothing={smoothing!r} is invalid; smoothing must be a number in [0, 0.99]")
    runs = _runs(runs)
    title = "Loss" if key == "loss" else key
    if not runs or all(_series(r, "train", key).empty and _series(r, "eval", key).empty for r in runs):
        return _empty(title, "no losses recorded yet")
    groups = _seed_groups(runs)
    if band is None:
        band = any(len(g) > 1 for g in groups.values())
    fig = go.Figure()
    validation = []  # drawn after every training line, so each evaluation's marker stays visible on top
    values: list[float] = []
    labels = dict(zip(map(id, runs), _labels(runs)))
    order = {id(r): k for k, r in enumerate(runs)}
    for i, (variant, members) in enumerate(groups.items()):
        color = PALETTE[i % len(PALETTE)]
        grouped = band and len(members) > 1
        for run in members:
            label = labels[id(run)]
            tr, ev = _series(run, "train", key), _series(run, "eval", key)
            values += tr.value.tolist() + ev.value.tolist()
            if grouped:
                color_j = color
                if not tr.empty:
                    fig.add_trace(go.Scatter(x=tr.step, y=tr.value, mode="lines", name=label, opacity=0.35,
                                             line=dict(color=color_j, width=0.8), legendgroup=variant,
                                             showlegend=False, hovertemplate=f"{label}<br>step %{{x}}: "
                                                                             f"%{{y:.4g}}<extra></extra>"))
            else:
                color_j = PALETTE[order[id(run)] % len(PALETTE)]
                if not tr.empty and smoothing:
                    fig.add_trace(go.Scatter(x=tr.step, y=tr.value, mode="lines", name=f"{label} train (raw)",
                                             opacity=0.2, line=dict(color=color_j, width=1), legendgroup=label,
                                             showlegend=False, hoverinfo="skip"))
                if not tr.empty:
                    y = smoothed(tr.value.tolist(), smoothing) if smoothing else tr.value
                    fig.add_trace(go.Scatter(x=tr.step, y=y, mode="lines", name=f"{label} train",
                                             opacity=0.75, line=dict(color=color_j, width=1.5), legendgroup=label))
                if not ev.empty:
                    validation.append(go.Scatter(
                        x=ev.step, y=ev.value, mode="markers+lines", name=f"{label} val",
                        line=dict(color=color_j, dash="dot"), legendgroup=label,
                        marker=dict(size=9, symbol="diamond", line=dict(color="white", width=1.5))))
            if run.status == "diverged":
                at = run.summary.get("diverged_at_step", tr.step.max() if not tr.empty else 0)
                fig.add_vline(x=at, line=dict(color=color_j, dash="dash"))
                fig.add_annotation(x=at, y=1, yref="paper", text=f"{label} diverged", showarrow=False,
                                   font=dict(color=color_j), yanchor="bottom")
        if grouped:
            n = len(members)
            for probe, part in (("train", "train"), ("eval", "val")):
                table = pd.concat([_series(r, probe, key).drop_duplicates("step", keep="last")
                                  .set_index("step").value.rename(k) for k, r in enumerate(members)], axis=1)
                if table.empty:
                    continue
                if probe == "train" and smoothing:
                    table = table.apply(lambda col: pd.Series(smoothed(col.tolist(), smoothing), index=col.index))
                mean, sd = table.mean(axis=1), table.std(axis=1, ddof=0).fillna(0)
                name = f"{variant} (mean ± sd, {n} runs) {part}"
                if probe == "train":
                    lower = (mean - sd).clip(lower=float(mean[mean > 0].min()) / 10 if (mean > 0).any() else None)
                    fig.add_trace(go.Scatter(x=list(mean.index) + list(mean.index[::-1]),
                                             y=list(mean + sd) + list(lower[::-1]), fill="toself",
                                             fillcolor=color, opacity=0.18, line=dict(width=0), hoverinfo="skip",
                                             legendgroup=variant, showlegend=False, name=f"{variant} ± sd"))
                    fig.add_trace(go.Scatter(x=mean.index, y=mean.values, mode="lines", name=name,
                                             line=dict(color=color, width=2.2), legendgroup=variant))
                else:
                    validation.append(go.Scatter(
                        x=mean.index, y=mean.values, mode="markers+lines", name=name, legendgroup=variant,
                        error_y=dict(type="data", array=sd.values, visible=True, thickness=1),
                        line=dict(color=color, dash="dot"),
                        marker=dict(size=9, symbol="diamond", line=dict(color="white", width=1.5))))
    for trace in validation:
        fig.add_trace(trace)
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=key, **LAYOUT)
    if log_y:
        _log_axis(fig, values)
    return fig


def _seed_groups(runs: list) -> dict[str, list]:
    """Runs that differ only in their seed (same variant, task, learning rate, steps and config), under one label:
    the variant, with the task or ``lr=…`` added where two groups would share it."""
    keyed: dict[tuple, list] = {}
    for run in runs:
        c = run.config
        key = (run.variant, run.task, c.get("lr"), c.get("steps"), json.dumps(c.get("config"), sort_keys=True,
                                                                             default=str))
        keyed.setdefault(key, []).append(run)
    labels = [k[0] for k in keyed]
    for extra in (lambda k: k[1], lambda k: f"lr={fmt_number(k[2])}" if isinstance(k[2], (int, float)) else "?",
                  lambda k: f"{k[3]} steps", lambda k: k[4]):
        if len(set(labels)) == len(labels):
            break
        clash = {label for label in labels if labels.count(label) > 1}
        labels = [f"{label} · {extra(k)}" if label in clash else label for label, k in zip(labels, keyed)]
    return dict(zip(labels, keyed.values()))


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
    """One line per (run, module) of any recorded metric, modules named short (``L0.q``, :func:`short_name`). One
    run: a colour per layer (:func:`layer_index`, along a sequential scale) and a dash per module within it; several
    runs: a colour per run and a dash per module."""
    runs = _runs(runs)
    title = title or f"{key} ({probe})"
    fig = go.Figure()
    dashes = ["solid", "dot", "dash", "dashdot", "longdash", "longdashdot"]
    values: list[float] = []
    for i, (run, label) in enumerate(zip(runs, _labels(runs))):
        df = _series(run, probe, key)
        modules = list(dict.fromkeys(df.module))
        names = short_names(m for m in modules if m)
        colours = _layer_colours(modules) if len(runs) == 1 else {}
        within: dict[int | None, int] = {}
        for j, (module, part) in enumerate(df.groupby("module", sort=False)):
            values += part.value.tolist()
            if len(runs) == 1:
                name = names.get(module, label) if module else label
                k = within[layer_index(module)] = within.get(layer_index(module), -1) + 1
                line = dict(color=colours[module], dash=dashes[k % len(dashes)])
            else:
                name = label if not module else f"{label} · {names[module]}"
                line = dict(color=PALETTE[i % len(PALETTE)], dash=dashes[j % len(dashes)])
            fig.add_trace(go.Scatter(x=part.step, y=part.value, mode="lines+markers", name=name, line=line,
                                     marker=dict(size=4), legendgroup=f"{label}/{layer_index(module)}",
                                     hovertemplate=f"{name} ({module or 'all'})<br>step %{{x}}: %{{y:.4g}}"
                                                   "<extra></extra>"))
    if not fig.data:
        return _empty(title, f"no '{key}' records from the {probe} probe")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=key, **LAYOUT)
    if log_y:
        _log_axis(fig, values)
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
    values: list[float] = []
    for run, label in zip(runs, _labels(runs)):
        m = run.metrics
        df = m[(m.probe == "gradients") & m.key.str.startswith("grad_norm/")]
        names = short_names(df.module)
        colours = _layer_colours(list(names))
        for (module, key), part in df.groupby(["module", "key"], sort=False):
            values += part.value.tolist()
            fig.add_trace(go.Scatter(x=part.step, y=part.value, mode="lines", line=dict(color=colours[module]),
                                     name=f"{label} · {names[module]} · {key.split('/', 1)[1]}"))
    if not fig.data:
        return _empty("Gradient norm per tensor", "no gradient records (the gradients probe did not run)")
    fig.update_layout(title="Gradient norm per tensor", xaxis_title="step", yaxis_title="‖∇‖", **LAYOUT)
    _log_axis(fig, values)
    return fig


# -- spectra ----------------------------------------------------------------------------------------------------

def _floored(s: torch.Tensor, floor: float) -> list:
    """σᵢ with values under ``floor`` (exact zeros among them) drawn on the floor."""
    return _np(s.float().clamp_min(floor))


def spectra(run, module: str | None = None, step: int | None = None, top: int = 64,
            floor: float = SPECTRUM_FLOOR) -> go.Figure:
    """Singular values of ΔW at ``step`` (default: the last) of ``module`` (default: the first; the dashboard's
    module picker passes it), with the true ΔW's where the task knows it. Values under ``floor``·σ₁ (σ₁ the larger of
    the learned and the true top value) are drawn on that floor, so the decades that matter fill the plot."""
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
    ref = run.snapshot("spectra", "singular_values_reference", module)
    ref = ref[:top] if ref is not None else None
    top_value = max(float(s.max()) if len(s) else 0.0, float(ref.max()) if ref is not None and len(ref) else 0.0)
    title = f"Singular values of ΔW · {short_name(module)} · step {shown}"
    if top_value <= 0:
        return _empty(title, "ΔW is zero at this step (no singular value to draw)")
    low = floor * top_value
    fig.add_trace(go.Scatter(x=list(range(1, len(s) + 1)), y=_floored(s, low), mode="lines+markers",
                             name=f"{run.variant} ΔW"))
    if ref is not None:
        fig.add_trace(go.Scatter(x=list(range(1, len(ref) + 1)), y=_floored(ref, low), mode="lines",
                                 name="true ΔW", line=dict(dash="dash", color="black")))
    fig.update_layout(title=title, xaxis_title="index i", yaxis_title="σᵢ", **LAYOUT)
    _log_axis(fig, [low, top_value])
    fig.update_yaxes(range=[math.log10(low) - 0.1, math.log10(top_value) + 0.1])
    return fig


def spectra_over_time(run, module: str | None = None, top: int = 32, floor: float = SPECTRUM_FLOOR) -> go.Figure:
    """Heatmap of log σᵢ(ΔW) over training: how the update's spectrum fills in. The colour scale runs from
    ``floor``·σ₁ (σ₁ the largest value over training) to σ₁."""
    modules = _modules(run, "spectra", "singular_values")
    if not modules:
        return _empty("Spectrum over training", "no spectra recorded")
    module = module or modules[0]
    steps = run.snapshot_steps("spectra", "singular_values", module)
    rows = [run.snapshot("spectra", "singular_values", module, t)[:top] for t in steps]
    width = max(len(r) for r in rows)
    top_value = max((float(r.max()) for r in rows if len(r)), default=0.0)
    title = f"Spectrum of ΔW over training · {short_name(module)}"
    if top_value <= 0:
        return _empty(title, "ΔW stayed zero (no singular value to draw)")
    low = floor * top_value
    z = [[math.log10(max(v, low)) for v in _np(r)] + [None] * (width - len(r)) for r in rows]
    decades = list(range(math.ceil(math.log10(low)), math.floor(math.log10(top_value)) + 1))
    fig = go.Figure(go.Heatmap(z=z, x=list(range(1, width + 1)), y=steps, colorscale="Viridis",
                               zmin=math.log10(low), zmax=math.log10(top_value),
                               hovertemplate="step %{y} · σ%{x}: 10^%{z:.3f}<extra></extra>",
                               colorbar=dict(title="σ", tickvals=decades,
                                             ticktext=[fmt_number(10.0 ** d) for d in decades])))
    fig.update_layout(title=title, xaxis_title="index i", yaxis_title="step", **LAYOUT)
    return fig


def small_multiples(runs, kind: str = "spectra", module: str | None = None, step: int | None = None,
                    floor: float = SPECTRUM_FLOOR) -> go.Figure:
    """One panel per run: ``kind`` is 'spectra' (σ of ΔW, log scale, one y range for all), 'allocation' (rank per
    module × step) or 'dct' / 'fft' / 'wht' maps. Heatmaps share one colour axis (one colour bar, one scale: the
    same colour is the same value in every panel); allocation panels use the discrete scale whose white is zero,
    and a run whose variant does not allocate shows its one line (:func:`allocation_summary`) instead."""
    runs = _runs(runs)
    if not runs:
        return _empty("Side by side", "no runs selected")
    labels = _labels(runs)
    cols = min(len(runs), 4)
    rows = math.ceil(len(runs) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=labels, horizontal_spacing=0.06, vertical_spacing=0.12)
    if kind == "allocation":
        tables = [_rank_table(run, "rank") for run in runs]
        top = max((float(t.max().max()) for t in tables if t is not None), default=1.0)
        width, _ = _bands(top)
        for i, (run, table) in enumerate(zip(runs, tables)):
            r, c = i // cols + 1, i % cols + 1
            if table is None:
                continue
            line = allocation_summary(run)
            if line is not None:
                _panel_note(fig, r, c, line.replace(" does not allocate: ", " does not allocate:<br>"))
                continue
            fig.add_trace(_allocation_trace(table, width, short_names(table.index), "rank"), r, c)
            fig.update_yaxes(autorange="reversed", row=r, col=c)
        if not fig.data and not fig.layout.annotations[len(labels):]:
            return _empty("Side by side", "no 'allocation' records in these runs")
        fig.update_layout(coloraxis=_allocation_axis(top, "rank"))
    else:
        probe, name = ("spectra", "singular_values") if kind == "spectra" else ("frequency", kind)
        shown = []
        for i, run in enumerate(runs):
            mods = _modules(run, probe, name)
            mod = module if module in mods else (mods[0] if mods else None)
            x = run.snapshot(probe, name, mod, step) if mod else None
            if x is not None:
                shown.append((i, run, mod, x))
        if kind == "spectra":
            top_value = max((float(x[:64].max()) for *_, x in shown if len(x)), default=0.0)
            for _, run, mod, _x in shown:
                ref = run.snapshot("spectra", "singular_values_reference", mod)
                if ref is not None and len(ref):
                    top_value = max(top_value, float(ref[:64].max()))
            low = floor * top_value
            for i, run, mod, x in shown:
                r, c = i // cols + 1, i % cols + 1
                fig.add_trace(go.Scatter(y=_floored(x[:64], low), mode="lines+markers", showlegend=False,
                                         marker=dict(size=4), line=dict(color=PALETTE[i % len(PALETTE)])), r, c)
                ref = run.snapshot("spectra", "singular_values_reference", mod)
                if ref is not None:
                    fig.add_trace(go.Scatter(y=_floored(ref[:64], low), mode="lines", showlegend=False,
                                             line=dict(color="black", dash="dash")), r, c)
                if top_value > 0:
                    _log_axis(fig, [low, top_value], row=r, col=c)
                    fig.update_yaxes(range=[math.log10(low) - 0.1, math.log10(top_value) + 0.1], row=r, col=c)
        else:
            top_value = max((float(x.max()) for *_, x in shown), default=1.0) or 1.0
            for i, _run, _mod, x in shown:
                r, c = i // cols + 1, i % cols + 1
                fig.add_trace(go.Heatmap(z=x.tolist(), coloraxis="coloraxis"), r, c)
                fig.update_yaxes(autorange="reversed", row=r, col=c)
            fig.update_layout(coloraxis=dict(colorscale="Magma", cmin=0, cmax=top_value,
                                              colorbar=dict(title="|coef|")))
        if not fig.data:
            return _empty("Side by side", f"no '{kind}' snapshots in these runs")
    what = {"spectra": "σᵢ(ΔW) (dashed: truth)", "allocation": "Rank per module over training"}.get(
        kind, f"|{kind.upper()}(ΔW)|")
    fig.update_layout(title=f"{what} side by side" + (f" · {short_name(module)}" if module else ""),
                      **{**SUBPLOTS, "height": 300 * rows + 100})
    return fig


def _panel_note(fig: go.Figure, row: int, col: int, text: str) -> None:
    """A line of text in the middle of one panel of a subplot grid (its axes hidden), placed in paper coordinates
    from the panel's domain (an axis with no trace has no "domain" reference plotly can place it on)."""
    cell = fig.get_subplot(row, col)
    fig.add_annotation(text=text, showarrow=False, font=dict(size=13), xref="paper", yref="paper", xanchor="center",
                       yanchor="middle", x=sum(cell.xaxis.domain) / 2, y=sum(cell.yaxis.domain) / 2)
    fig.update_xaxes(visible=False, row=row, col=col)
    fig.update_yaxes(visible=False, row=row, col=col)


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


def _strongest(run, module: str, step: int | None, n: int, top: int | None) -> tuple[torch.Tensor, str]:
    """Indices of the ``top`` largest |coefficients| among ``n`` locations (all when there are no more, or no
    coefficients recorded), and a phrase saying what was kept."""
    coef = run.snapshot("frequency", "coefficients", module, step)
    if top is None or n <= top:
        return torch.arange(n), ""
    if coef is None or coef.numel() != n:
        return torch.arange(top), f"first {top} of {n}"
    return coef.abs().flatten().argsort(descending=True)[:top], f"top {top} of {n} by |coefficient|"


def frequency_map(run, module: str | None = None, kind: str = "dct", step: int | None = None,
                  top: int | None = TOP_LOCATIONS) -> go.Figure:
    """|DCT| / |FFT| / |WHT| of ΔW, with the variant's spectral locations overlaid on the map of the basis it
    declares (``frequency_basis``): "learned locations" where they move in training (``learned_locations``), "fixed
    entries" where they do not; only the ``top`` strongest by |coefficient| (None: all), as one WebGL trace, so the
    map stays visible and the browser draws it at once. A one-sided variant's map (``frequency_sides == "input"``,
    recorded by the probe as ``<kind>_input_side_only``) has channels as rows."""
    title = f"|{kind.upper()}(ΔW)|"
    modules = _modules(run, "frequency", kind)
    if not modules:
        return _empty(title, "no frequency maps recorded (the frequency probe did not run)")
    module = module or modules[0]
    z = run.snapshot("frequency", kind, module, step)
    if z is None:
        return _empty(title, f"no map for {module}")
    layer = _layer_class(run)
    fig = go.Figure(go.Heatmap(z=z.tolist(), colorscale="Magma", zmin=0, colorbar=dict(title="|coef|"),
                               hovertemplate="row %{y}, col %{x}: %{z:.4g}<extra></extra>"))
    loc = run.snapshot("frequency", "locations", module, step)
    if loc is not None and loc.numel() and kind == frequency_basis(run):
        at = map_coordinates(run, module, kind, loc, tuple(z.shape))
        keep, kept = _strongest(run, module, step, len(at), top)
        at = at[keep]
        name = "learned locations" if layer.learned_locations else "fixed entries"
        fig.add_trace(go.Scattergl(x=_np(at[:, 1]), y=_np(at[:, 0]), mode="markers",
                                   name=f"{name} ({kept})" if kept else name,
                                   marker=dict(symbol="circle-open", size=7, color="cyan", line=dict(width=1.5))))
    # a one-sided map (the probe transformed only the input side, as the variant declares) has channels as rows
    one_sided = (layer.frequency_sides == "input" and kind == frequency_basis(run)
                 and not _series(run, "frequency", f"{kind}_input_side_only", module).empty)
    if one_sided:
        title = f"|ΔW · {kind.upper()} along the input|"
    pooled_from = _series(run, "frequency", "map_pooled_from", module)
    if not pooled_from.empty:
        title += f" (max-pooled from {int(pooled_from.value.iloc[-1])} per side)"
    # the colour bar holds the right-hand side: the markers' legend goes under the plot (never over the title)
    fig.update_layout(title=f"{title} · {short_name(module)}", xaxis_title="input frequency",
                      yaxis_title="output channel" if one_sided else "output frequency",
                      showlegend=len(fig.data) > 1,  # one marker trace: plotly would hide its legend (its name)
                      **{**LAYOUT, "legend": BELOW, "margin": {**LAYOUT["margin"], "b": 90}})
    fig.update_yaxes(autorange="reversed")
    return fig


def location_trajectories(run, module: str | None = None, top: int | None = TOP_LOCATIONS) -> go.Figure:
    """Where a learned-location variant's spectral coefficients moved in training: for each location that moved
    (its first and last positions differ), its path through the distinct cells it visited, from a hollow marker
    where it started to a filled one where it ended; locations that never moved as small grey dots. Only the ``top``
    strongest by final |coefficient| of each kind (None: all), as WebGL traces."""
    modules = _modules(run, "frequency", "locations")
    if not modules:
        return _empty("Location trajectories", f"{run.variant} records no spectral locations")
    module = module or modules[0]
    steps = run.snapshot_steps("frequency", "locations", module)
    track = [run.snapshot("frequency", "locations", module, t) for t in steps]
    n = min(len(t) for t in track)
    path = torch.stack([t[:n].reshape(n, -1)[:, :2] for t in track])  # (steps, n, 2): (row, col)
    moved = (path[0] != path[-1]).any(dim=1)
    coef = run.snapshot("frequency", "coefficients", module)
    strength = coef.abs().flatten()[:n] if coef is not None and coef.numel() >= n else \
        (path[-1] - path[0]).abs().sum(dim=1)
    title = (f"Learned spectral locations over training · {short_name(module)}" if _layer_class(run).learned_locations
             else f"Fixed spectral entries (they never move) · {short_name(module)}")

    def strongest(mask):
        idx = mask.nonzero().flatten()
        idx = idx[strength[idx].argsort(descending=True)]
        return idx if top is None else idx[:top]

    fig = go.Figure()
    still = strongest(~moved)
    if len(still):
        fig.add_trace(go.Scattergl(x=_np(path[-1, still, 1]), y=_np(path[-1, still, 0]), mode="markers",
                                   name=f"did not move ({len(still)} of {int((~moved).sum())} shown)",
                                   marker=dict(size=4, color="#9a9a9a")))
    go_ = strongest(moved)
    if len(go_):
        xs, ys = [], []
        for j in go_.tolist():
            cells = path[:, j]
            keep = torch.ones(len(cells), dtype=torch.bool)
            keep[1:] = (cells[1:] != cells[:-1]).any(dim=1)  # the distinct cells, in the order visited
            xs += _np(cells[keep, 1]) + [None]
            ys += _np(cells[keep, 0]) + [None]
        fig.add_trace(go.Scattergl(x=xs, y=ys, mode="lines", name="path", hoverinfo="skip",
                                   line=dict(color="rgba(31,119,180,0.5)", width=1)))
        fig.add_trace(go.Scattergl(x=_np(path[0, go_, 1]), y=_np(path[0, go_, 0]), mode="markers",
                                   name=f"start (step {steps[0]})",
                                   marker=dict(symbol="circle-open", size=6, color="#1f77b4")))
        fig.add_trace(go.Scattergl(x=_np(path[-1, go_, 1]), y=_np(path[-1, go_, 0]), mode="markers",
                                   name=f"end (step {steps[-1]}): {len(go_)} of {int(moved.sum())} moved",
                                   marker=dict(size=6, color="#d62728")))
    if not len(go_):
        title += " · none moved"
    fig.update_layout(title=title, xaxis_title="input frequency", yaxis_title="output frequency", **LAYOUT)
    fig.update_yaxes(autorange="reversed")
    return fig


#: at most this many colour bands on an allocation scale (ranks above it share bands of equal width)
MAX_BANDS = 16


def _bands(top: float) -> tuple[int, int]:
    """(band width, number of bands above zero) of a discrete scale for values in [0, ``top``]."""
    top = max(1, math.ceil(top))
    width = 1 if top <= MAX_BANDS else math.ceil(top / MAX_BANDS)
    return width, math.ceil(top / width)


def _band_of(value, width: int):
    """The colour band of one value: 0 for exactly zero (drawn white), else ⌈value / width⌉ ≥ 1."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return 0 if value <= 0 else max(1, math.ceil(value / width))


def _allocation_axis(top: float, title: str) -> dict:
    """One discrete colour axis for every allocation panel of a figure: white is exactly zero (a pruned or unused
    module), the blues start at the first non-zero band, whatever the data's own minimum (the old per-panel
    autoscale drew rank 63 of 64 white)."""
    width, n = _bands(top)
    colours = ["#ffffff"] + sample_colorscale("Blues", [0.3 + 0.7 * k / max(1, n - 1) for k in range(n)])
    scale = []
    for k, c in enumerate(colours):
        scale += [[k / (n + 1), c], [(k + 1) / (n + 1), c]]
    ticks = list(range(n + 1))
    step = max(1, math.ceil(len(ticks) / 9))
    text = ["0" if k == 0 else (f"{k}" if width == 1 else f"{(k - 1) * width + 1}–{k * width}") for k in ticks]
    return dict(colorscale=scale, cmin=-0.5, cmax=n + 0.5,
                colorbar=dict(title=title, tickvals=ticks[::step], ticktext=text[::step], len=0.9))


def _variant_class(run):
    try:
        return get_variant(run.variant)
    except ConfigError:
        return None


def true_ranks(run) -> dict[str, int] | None:
    """Rank of each module's true ΔW where the task knows it: the numerical rank (σᵢ > 10⁻⁴·σ₁, as the spectra probe
    counts it) of the ``singular_values_reference`` the spectra probe recorded; None when the task has no truth."""
    from .probes.spectra import numerical_rank

    modules = run.snapshot_modules("spectra", "singular_values_reference")
    if not modules:
        return None
    return {m: numerical_rank(run.snapshot("spectra", "singular_values_reference", m)) for m in modules}


def _rank_table(run, key: str) -> pd.DataFrame:
    df = _series(run, "ranks", key)
    df = df[df.module != ""]
    return df.pivot_table(index="module", columns="step", values="value", sort=False) if not df.empty else None


def allocation_summary(run, key: str = "rank") -> str | None:
    """One line for a variant that does not allocate (``Variant.dynamic`` false; or, for a variant not registered
    here, ranks that never change): ``fixed rank 8 in every module``, or the rank of each module where they differ.
    None for a variant that allocates, whose allocation deserves its heatmap."""
    table = _rank_table(run, key)
    if table is None:
        return None
    cls = _variant_class(run)
    elsewhere = cls is not None and cls.dynamic and key == "rank" and cls.allocation != "rank"
    allocates = (cls.dynamic and not elsewhere) if cls is not None else bool((table.nunique(axis=1) > 1).any())
    if allocates:
        return None
    last = table.ffill(axis=1).iloc[:, -1]
    names = short_names(table.index)
    head = (f"{run.variant} allocates {cls.allocation}, not {key} (see its variant views): ΔW has {key}"
            if elsewhere else f"{run.variant} does not allocate: fixed {key}")
    if last.nunique() == 1:
        return f"{head} {fmt_number(float(last.iloc[0]))} in every module"
    return f"{head} " + ", ".join(f"{names[m]} {fmt_number(float(v))}" for m, v in last.items())


def bit_allocation(run, step: int | None = None) -> go.Figure:
    """Bayesian-LoRA with ``quantize=True``: per module, the active rank beside the learned bits of A and B at
    ``step`` (default: the last probe step), the adapter's bit operations against every rank at 32 bits in the
    title (the paper's metric)."""
    tables = {k: _rank_table(run, k) for k in ("rank", "bits_A", "bits_B")}
    if tables["bits_A"] is None:
        return _empty("Bits and ranks", f"{run.variant} learns no quantization levels (Bayesian-LoRA with "
                                        "quantize=True does)")
    col = (lambda t: t.ffill(axis=1).iloc[:, -1]) if step is None else (lambda t: t.ffill(axis=1)[step])
    last = pd.DataFrame({k: col(t) for k, t in tables.items() if t is not None})
    names = short_names(last.index)
    shade = last / last.max().clip(lower=1e-12)  # each column on its own scale: ranks and bits differ in size
    fig = go.Figure(go.Heatmap(z=shade.to_numpy(), x=["rank", "bits A", "bits B"][:len(last.columns)],
                               y=[names[m] for m in last.index], text=last.to_numpy(), texttemplate="%{text:.0f}",
                               colorscale="Blues", showscale=False, ygap=1, xgap=2))
    bops = _rank_table(run, "bops")
    title = f"rank and learned bits per module · {run.variant}"
    if bops is not None:
        total = float(bops.ffill(axis=1).iloc[:, -1].sum())
        title += f" · {fmt_number(total)} bit operations per token"
    fig.update_layout(title=title, yaxis=dict(autorange="reversed"),
                      **{**LAYOUT, "height": max(300, 28 * len(last) + 140)})
    return fig


def _note(title: str, text: str, height: int = 130) -> go.Figure:
    """A figure that is one line of text (a view with nothing to plot but something to say)."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0, xanchor="left", y=0.5, xref="paper", yref="paper",
                       font=dict(size=14))
    fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      **{**LAYOUT, "height": height, "margin": dict(l=20, r=20, t=50, b=10)})
    return fig


def _allocation_trace(table: pd.DataFrame, width: int, names: dict[str, str], key: str) -> go.Heatmap:
    z = [[_band_of(v, width) for v in row] for row in table.values.tolist()]
    return go.Heatmap(z=z, x=list(table.columns), y=[names[m] for m in table.index], coloraxis="coloraxis",
                      customdata=table.values.tolist(), xgap=0, ygap=1,
                      hovertemplate=f"%{{y}} · step %{{x}}<br>{key} %{{customdata:.4g}}<extra></extra>")


def allocation_heatmap(run, key: str = "rank", truth: dict[str, int] | None = None) -> go.Figure:
    """Module × step heatmap of the allocated rank (or any per-module ``ranks`` record) on a discrete scale whose
    white is exactly zero, modules named short (``L0.q``), with the true ranks in a column beside it where the task
    knows them (``truth``, default :func:`true_ranks`). A variant that does not allocate gets one line instead
    (:func:`allocation_summary`): a heatmap of one constant colour says nothing."""
    table = _rank_table(run, key)
    if table is None:
        return _empty("Allocation", f"no '{key}' records (the ranks probe did not run)")
    title = f"{key} per module over training · {run.variant}"
    line = allocation_summary(run, key)
    if line is not None:
        return _note(title, line)
    truth = (true_ranks(run) if truth is None else truth) if key == "rank" else None
    truth = {m: truth[m] for m in table.index if truth and m in truth} or None
    top = max(float(table.max().max()), max(truth.values(), default=0) if truth else 0)
    width, _ = _bands(top)
    names = short_names(table.index)
    height = max(300, 28 * len(table) + 140)
    if truth is None:
        fig = go.Figure(_allocation_trace(table, width, names, key))
    else:
        fig = make_subplots(rows=1, cols=2, column_widths=[0.88, 0.12], shared_yaxes=True, horizontal_spacing=0.02,
                            subplot_titles=["learned", "true"])
        fig.add_trace(_allocation_trace(table, width, names, key), 1, 1)
        values = [truth.get(m) for m in table.index]
        fig.add_trace(go.Heatmap(z=[[_band_of(v, width)] for v in values], x=["true"],
                                 y=[names[m] for m in table.index], coloraxis="coloraxis", ygap=1,
                                 text=[[str(v)] for v in values], texttemplate="%{text}",
                                 hovertemplate="%{y}: true rank %{text}<extra></extra>"), 1, 2)
        fig.update_xaxes(showticklabels=False, row=1, col=2)
    fig.update_layout(title=title, coloraxis=_allocation_axis(top, key),
                      **{**(SUBPLOTS if truth else LAYOUT), "height": height})
    first = dict(row=1, col=1) if truth else {}
    fig.update_xaxes(title_text="step", **first)
    fig.update_yaxes(title_text="module", autorange="reversed", **first)
    return fig


#: bars a variant-view panel draws at most (the largest by magnitude, in order)
TOP_BARS = 40


def variant_views(run, module: str | None = None, step: int | None = None, top: int = TOP_BARS) -> go.Figure:
    """The variant's own per-module views recorded by the probes: gates, masks, per-rank learning-rate scales,
    spectral coefficients (one bar panel each). A view longer than ``top`` shows its ``top`` largest |values|,
    sorted, each labelled by its index (or its (row, col) location for spectral coefficients)."""
    views = [(p, n) for p, n in (("ranks", "gates"), ("ranks", "mask"), ("ranks", "lr_scale"),
                                 ("ranks", "bit_gates"), ("frequency", "coefficients")) if run.snapshot_modules(p, n)]
    if not views:
        return _empty("Variant views", f"{run.variant} reports no gates, masks or coefficients")
    modules = run.snapshot_modules(*views[0])
    module = module if module in modules else modules[0]
    data, titles = [], []
    for probe, name in views:
        x = run.snapshot(probe, name, module, step)
        x = x.flatten() if x is not None else None
        if x is not None and len(x) > top:
            keep = x.abs().argsort(descending=True)[:top]
            loc = run.snapshot("frequency", "locations", module, step) if name == "coefficients" else None
            if loc is not None and loc.dim() == 2 and len(loc) == len(x):
                ticks = [f"({int(loc[j, 0])},{int(loc[j, 1])})" for j in keep.tolist()]
                ticks = [t if ticks.count(t) == 1 else f"{t} #{j}" for t, j in zip(ticks, keep.tolist())]
            else:
                ticks = [str(j) for j in keep.tolist()]
            data.append((ticks, _np(x[keep])))
            titles.append(f"{name}: top {top} of {len(x)} by |value|")
        else:
            data.append((None if x is None else [str(j) for j in range(len(x))], None if x is None else _np(x)))
            titles.append(name)
    fig = make_subplots(rows=1, cols=len(views), subplot_titles=titles)
    for i, (ticks, values) in enumerate(data):
        if values is not None:
            fig.add_trace(go.Bar(x=ticks, y=values, showlegend=False, marker_color=PALETTE[i % len(PALETTE)],
                                 hovertemplate="%{x}: %{y:.4g}<extra></extra>"), 1, i + 1)
            fig.update_xaxes(type="category", row=1, col=i + 1)
    fig.update_layout(title=f"{run.variant}'s own views · {short_name(module)}", **SUBPLOTS)
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
        return f"sharpness {fmt_number(float(result['sharpness']))}"
    text = f"ε-sharpness {fmt_number(float(result['sharpness']))}% (ε = {fmt_number(float(eps))}"
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
                      yaxis_title="β", **{**LAYOUT, "height": 480, "legend": BELOW,
                                          "margin": {**LAYOUT["margin"], "b": 90}})
    return fig


# -- comparisons ------------------------------------------------------------------------------------------------

def metric_column(runs) -> str:
    """The task's metric as a column title: its own name and which way is better, e.g. ``rel_error (lower is
    better)``; ``metric`` when no run has finished an evaluation."""
    for r in _runs(runs):
        name = r.summary.get("metric") or r.config.get("metric")
        if name:
            return f"{name} ({'higher' if r.summary.get('higher_is_better') else 'lower'} is better)"
    return "metric"


def _rounded(x, digits: int = 4):
    """``digits`` significant digits as a number (the table stays sortable), not ``9.645427984400854e-06``."""
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def results_frame(runs, metric: str | None = None, role: str | None = None) -> pd.DataFrame:
    """One row per run as a pandas DataFrame (for a sortable table and CSV export): variant, ``setting`` (``lr=…,
    seed=…``), status, trainable parameters, final loss, the task's metric under its own name (``metric``, default
    :func:`metric_column`), ms per step and the run id, numbers to four significant digits; runs of a variant
    together in seed order. ``role`` (e.g. ``compared`` or ``sweep``) adds a column saying which part of a
    comparison the runs are."""
    runs = _runs(runs)
    metric = metric or metric_column(runs)
    columns = ["variant", "setting", "status", "trainable_params", "final_loss", metric, "ms_per_step", "run_id"]
    rows = []
    for r in runs:
        s = r.summary
        pace = s.get("seconds_per_step")
        rows.append({"variant": r.variant, "setting": run_setting(r), "status": r.status,
                     "trainable_params": s.get("trainable_params"), "final_loss": _rounded(s.get("final_loss")),
                     metric: _rounded(s.get("metric_value")),
                     "ms_per_step": None if pace is None else _rounded(1000 * pace), "run_id": r.id})
    df = pd.DataFrame(rows, columns=columns)
    if not df.empty:
        order = {v: i for i, v in enumerate(dict.fromkeys(df.variant))}
        df = df.assign(_v=df.variant.map(order), _s=[r.config.get("seed") or 0 for r in runs])
        df = df.sort_values(["_v", "_s"], kind="stable").drop(columns=["_v", "_s"]).reset_index(drop=True)
    if role is not None:
        df.insert(1, "role", role)
    return df


def _metric_label(df: pd.DataFrame, metric: str) -> str:
    """The real name of ``metric_value`` in a comparison table (its ``metric`` column), else ``metric`` itself."""
    if metric == "metric_value" and "metric" in df.columns:
        names = [n for n in dict.fromkeys(df["metric"]) if isinstance(n, str) and n]
        if names:
            return " / ".join(names)
    return metric


def comparison_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> go.Figure:
    """A comparison (or run list) DataFrame as a table figure; ``metric_value`` is headed by the metric's own name
    (``rel_error``, ``accuracy``) and numbers have four significant digits."""
    if df is None or len(df) == 0:
        return _empty("Results", "no results yet")
    columns = list(columns or [c for c in ("variant", "seed", "lr", "trainable_params", "final_loss",
                                           "metric_value", "seconds_per_step", "status") if c in df.columns])

    def fmt(v):
        if isinstance(v, float) and math.isnan(v):
            return ""
        return fmt_number(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)

    header = [_metric_label(df, c) for c in columns]
    fig = go.Figure(go.Table(header=dict(values=header, fill_color="#e8eef7", align="left"),
                             cells=dict(values=[[fmt(v) for v in df[c]] for c in columns], align="left")))
    fig.update_layout(title="Results", **{**LAYOUT, "height": 150 + 30 * (len(df) + 1)})
    return fig


def comparison_bars(df: pd.DataFrame, metric: str = "metric_value", error: str | None = None) -> go.Figure:
    """Mean of ``metric`` per variant over seeds, with the standard deviation as error bars, titled by the metric's
    own name."""
    if df is None or len(df) == 0 or metric not in df.columns:
        return _empty(metric, "no results yet")
    ok = df[df["status"] == "completed"] if "status" in df.columns else df
    if ok.empty:
        return _empty(metric, "no completed runs")
    g = ok.groupby("variant", sort=False)[metric]
    mean, std = g.mean(), g.std(ddof=0).fillna(0)
    label = _metric_label(ok, metric)
    fig = go.Figure(go.Bar(x=list(mean.index), y=mean.values, error_y=dict(type="data", array=std.values),
                           marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(mean))],
                           hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
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
    label = _metric_label(ok, metric)
    fig.update_layout(title="Trainable parameters vs quality", xaxis_title="trainable parameters",
                      yaxis_title=label, **LAYOUT)
    _log_axis(fig, g.trainable_params.tolist(), axis="x")
    return fig


def lr_sweep(runs, chosen=None) -> go.Figure:
    """A learning-rate sweep, kept apart from the seed runs: the final metric of each swept run against its
    learning rate (log x), one line per variant, the chosen rate ringed. ``chosen`` maps variant → rate
    (``Comparison.best_lr``); by default the best rate of each variant by its metric."""
    runs = [r for r in _runs(runs) if isinstance(r.config.get("lr"), (int, float))
            and r.summary.get("metric_value") is not None]
    if not runs:
        return _empty("Learning-rate sweep", "no swept runs with a final metric yet")
    name = metric_column(runs)
    fig = go.Figure()
    rates: list[float] = []
    for i, (variant, members) in enumerate(pd.Series(runs).groupby([r.variant for r in runs], sort=False)):
        members = sorted(members, key=lambda r: r.config["lr"])
        x = [r.config["lr"] for r in members]
        y = [r.summary["metric_value"] for r in members]
        rates += x
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=variant, line=dict(color=color),
                                 text=[run_setting(r) for r in members],
                                 hovertemplate=f"{variant} · %{{text}}<br>{name}: %{{y:.4g}}<extra></extra>"))
        higher = bool(members[0].summary.get("higher_is_better"))
        best = (chosen or {}).get(variant)
        if best is None:
            best = (max if higher else min)(members, key=lambda r: r.summary["metric_value"]).config["lr"]
        at = [r for r in members if math.isclose(r.config["lr"], best, rel_tol=1e-9)]
        if at:
            fig.add_trace(go.Scatter(x=[best], y=[at[0].summary["metric_value"]], mode="markers", showlegend=False,
                                     marker=dict(size=16, symbol="circle-open", color=color, line=dict(width=2)),
                                     hovertemplate=f"{variant}: chosen lr={fmt_number(best)}<extra></extra>"))
    fig.update_layout(title=f"Learning-rate sweep: {name} by learning rate (ringed: chosen)",
                      xaxis_title="learning rate", yaxis_title=name, **LAYOUT)
    _log_axis(fig, rates, axis="x")
    return fig


# -- DoRA-style magnitudes --------------------------------------------------------------------------------------

def _adaptation_of(run_or_adaptation):
    """The live adaptation of a run (restored from its saved adapter when the run was loaded from disk), or the
    adaptation itself; None when there is none to read."""
    if hasattr(run_or_adaptation, "named_layers"):
        return run_or_adaptation
    ad = getattr(run_or_adaptation, "adaptation", None)
    if ad is None and getattr(run_or_adaptation, "path", None) is not None:
        try:
            ad = run_or_adaptation.restore()
        except (FileNotFoundError, ConfigError, OSError):
            return None
    return ad


def magnitude_view(run, module: str | None = None) -> go.Figure:
    """Weight decomposition (Liu et al., 2024, DoRA, Eq. 5 and §3): for every output row of each adapted module, the
    learned magnitude m against the row norm ‖W0‖_c it started from (left; the diagonal is "unchanged"), and the
    change of magnitude ΔM = m − ‖W0‖_c against the change of direction ΔD = 1 − cos(W′, W0) of that row (right;
    the paper's Fig. 2 reads these per layer: full fine-tuning and DoRA change one with little of the other, LoRA
    both together). Read from the layers' ``inspect()['magnitude']`` (any variant that learns one), so it needs the
    run's adaptation: the live one, or the saved adapter restored on the task's model. ``module``: one module (all
    by default), coloured by layer."""
    title = "Learned magnitudes against ‖W0‖ row norms"
    ad = _adaptation_of(run)
    if ad is None:
        return _empty(title, "no adaptation to read (the run has no live or saved adapter)")
    layers = [(name, layer) for name, layer in ad.named_layers() if "magnitude" in layer.inspect()
              and (module is None or name == module)]
    if not layers:
        return _empty(title, "these layers learn no magnitude (DoRA-style m) to show")
    names = short_names(n for n, _ in layers)
    colours = _layer_colours(list(names))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=["m against ‖W0‖_c (diagonal: unchanged)",
                                        "ΔM against ΔD = 1 − cos(W′, W0), per row"])
    lo, hi = math.inf, -math.inf
    for name, layer in layers:
        with torch.no_grad():
            w0 = layer.pretrained_weight().detach().float()
            m = layer.inspect()["magnitude"].detach().float().flatten()
            w = layer.effective_weight().detach().float()
            norm0 = torch.linalg.vector_norm(w0, dim=1)
            direction = 1 - torch.nn.functional.cosine_similarity(w, w0, dim=1)
        lo, hi = min(lo, float(norm0.min()), float(m.min())), max(hi, float(norm0.max()), float(m.max()))
        style = dict(size=5, color=colours[name], opacity=0.75)
        fig.add_trace(go.Scattergl(x=_np(norm0), y=_np(m), mode="markers", name=names[name], marker=style,
                                   legendgroup=name, hovertemplate=f"{names[name]} row %{{pointNumber}}<br>‖W0‖ "
                                                                   "%{x:.4g} → m %{y:.4g}<extra></extra>"), 1, 1)
        fig.add_trace(go.Scattergl(x=_np(direction), y=_np(m - norm0), mode="markers", name=names[name],
                                   marker=style, legendgroup=name, showlegend=False,
                                   hovertemplate=f"{names[name]} row %{{pointNumber}}<br>ΔD %{{x:.4g}}, "
                                                 "ΔM %{y:.4g}<extra></extra>"), 1, 2)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="m = ‖W0‖_c (unchanged)",
                             line=dict(color="#444", dash="dash", width=1)), 1, 1)
    fig.update_xaxes(title_text="‖W0‖_c", row=1, col=1)
    fig.update_yaxes(title_text="learned m", row=1, col=1)
    fig.update_xaxes(title_text="ΔD", row=1, col=2)
    fig.update_yaxes(title_text="ΔM", row=1, col=2)
    where = f" · {names[module]}" if module else ""
    fig.update_layout(title=f"{title}{where} · {getattr(run, 'variant', '')}".rstrip(" ·"), **SUBPLOTS)
    return fig


def set_y_scale(fig: go.Figure, scale: str = "log") -> None:
    """Switch a figure's y axis between ``log`` (ticks at powers of ten, :func:`_log_axis`, from the figure's own
    data) and ``linear`` (plotly's automatic ticks: the log axis's tick settings cleared), in place."""
    if scale not in ("log", "linear"):
        raise ConfigError(f"scale={scale!r} is invalid; scale must be 'log' or 'linear'")
    if scale == "linear":
        fig.update_yaxes(type="linear", dtick=None, tick0=None, tickvals=None, ticktext=None)
        return
    values = [v for t in fig.data if getattr(t, "y", None) is not None and t.type in ("scatter", "scattergl")
              for v in t.y if isinstance(v, (int, float))]
    _log_axis(fig, values)


# -- Pareto views of a study (issue 19) -------------------------------------------------------------------------
#: the cost axes of the Pareto views: (column of a study summary, else of a comparison table; axis title)
PARETO_COSTS = {"params": ("trainable_params", "trainable parameters"),
                "time": ("seconds_per_step", "seconds per step"),
                "memory": ("peak_memory_mb", "peak memory (MB)")}


def pareto_front(cost: Sequence[float], metric: Sequence[float], higher_is_better: bool = False) -> list[bool]:
    """Which points are on the Pareto frontier: no other point costs no more and scores at least as well, with one
    of the two strictly (missing values are never on it)."""
    pts = [(float(c), float(m) if higher_is_better else -float(m)) for c, m in zip(cost, metric)]
    ok = [math.isfinite(c) and math.isfinite(m) for c, m in pts]
    front = []
    for i, (c, m) in enumerate(pts):
        dominated = any(ok[j] and j != i and pts[j][0] <= c and pts[j][1] >= m and (pts[j][0] < c or pts[j][1] > m)
                        for j in range(len(pts)))
        front.append(ok[i] and not dominated)
    return front


def _pareto_columns(df: pd.DataFrame, cost: str, metric: str) -> tuple[pd.DataFrame, str, str, str | None]:
    """A study summary (``<col>_mean`` columns, one row per protocol × variant) or a comparison table (one row
    per run, averaged here over completed runs): the frame to draw, its cost and metric columns, the group column."""
    group = "protocol" if "protocol" in df.columns else None
    if f"{metric}_mean" in df.columns:  # a summary
        return df, f"{cost}_mean" if f"{cost}_mean" in df.columns else cost, f"{metric}_mean", group
    ok = df[df["status"] == "completed"] if "status" in df.columns else df
    keys = [k for k in (group, "variant") if k]
    g = ok.groupby(keys, sort=False)[[cost, metric]].mean().reset_index()
    return g, cost, metric, group


def pareto(df: pd.DataFrame, cost: str = "params", metric: str = "metric_value",
           higher_is_better: bool | None = None) -> go.Figure:
    """The metric of each variant (a point per protocol × variant, with its confidence interval when the frame has
    one) against a cost (``"params"``, ``"time"``, ``"memory"`` or a column name), with the frontier of
    non-dominated points drawn as a step line per protocol; the split the numbers are from is in the title."""
    col, xtitle = PARETO_COSTS.get(cost, (cost, cost))
    title = f"{_metric_label(df, metric) if df is not None and len(df) else metric} vs {xtitle}"
    if df is None or len(df) == 0:
        return _empty(title, "no results yet")
    frame, x, y, group = _pareto_columns(df, col, metric)
    if x not in frame.columns or y not in frame.columns:
        return _empty(title, f"the table has no {x} column")
    if higher_is_better is None:
        higher_is_better = bool(df.attrs.get("higher_is_better", False))  # summarize() and compare() set it
    frame = frame[pd.to_numeric(frame[x], errors="coerce").notna() & pd.to_numeric(frame[y], errors="coerce").notna()]
    if frame.empty:
        return _empty(title, "no completed runs with both numbers")
    fig = go.Figure()
    symbols = ["circle", "diamond", "square", "triangle-up"]
    for k, (name, g) in enumerate(frame.groupby(group, sort=False) if group else [(None, frame)]):
        colour = PALETTE[k % len(PALETTE)]
        err = {}
        if f"{metric}_ci_high" in g.columns:
            hi, lo = g[f"{metric}_ci_high"] - g[y], g[y] - g[f"{metric}_ci_low"]
            err = dict(error_y=dict(type="data", array=hi.fillna(0).tolist(), arrayminus=lo.fillna(0).tolist(),
                                    thickness=1))
        fig.add_trace(go.Scatter(x=g[x], y=g[y], mode="markers+text", text=list(g["variant"]),
                                 textposition="top center", name=name or "variants", legendgroup=str(name),
                                 marker=dict(size=10, color=colour, symbol=symbols[k % len(symbols)]),
                                 hovertemplate="%{text}: %{y:.4g} at %{x:.4g}<extra></extra>", **err))
        on = g[pareto_front(g[x].tolist(), g[y].tolist(), higher_is_better)].sort_values(x)
        if len(on):
            fig.add_trace(go.Scatter(x=on[x], y=on[y], mode="lines", line=dict(color=colour, dash="dot", shape="hv"),
                                     name=f"frontier{f' ({name})' if name else ''}", legendgroup=str(name),
                                     hoverinfo="skip"))
    split = df.attrs.get("split") or (", ".join(dict.fromkeys(df["split"].astype(str))) if "split" in df else "")
    better = "higher" if higher_is_better else "lower"
    fig.update_layout(title=f"{title}{f' (on {split})' if split else ''}: {better} is better", xaxis_title=xtitle,
                      yaxis_title=_metric_label(df, metric), **LAYOUT)
    if col == "trainable_params":
        _log_axis(fig, frame[x].tolist(), axis="x")
    return fig


def pareto_params(df: pd.DataFrame, metric: str = "metric_value") -> go.Figure:
    """:func:`pareto` against trainable parameters (log axis)."""
    return pareto(df, "params", metric)


def pareto_time(df: pd.DataFrame, metric: str = "metric_value") -> go.Figure:
    """:func:`pareto` against seconds per training step."""
    return pareto(df, "time", metric)


def pareto_memory(df: pd.DataFrame, metric: str = "metric_value") -> go.Figure:
    """:func:`pareto` against a training step's peak memory (CUDA's peak allocation; on a CPU the tensors the run
    holds plus the step's own peak, counted by ``Trainer._memory``, never the process's RSS)."""
    return pareto(df, "memory", metric)


def study_csv(df: pd.DataFrame, path=None) -> str:
    """A study's (or comparison's) table as CSV, with its notes (split, spread, test) as leading ``#`` lines
    (:func:`workbench.study.export_csv`)."""
    from .study import export_csv

    return export_csv(df, path)


__all__ += ["pareto", "pareto_params", "pareto_time", "pareto_memory", "pareto_front", "study_csv", "PARETO_COSTS"]
CAPTIONS.update({
    "pareto": "Each point is a variant (per protocol), its metric against a cost, bars its confidence interval; the "
              "dotted step line joins the points no other beats on both. Look for variants off the frontier.",
    "pareto_params": "Metric against trainable parameters (log axis), frontier dotted. A variant below-right of "
                     "the line spends more parameters for no better result.",
    "pareto_time": "Metric against seconds per training step, frontier dotted. Fewer parameters do not always mean "
                   "faster steps.",
    "pareto_memory": "Metric against peak memory, frontier dotted. On a CPU this is the process's peak RSS, shared "
                     "by every run of the process, so read it on a GPU.",
})


def claim_seeds(values: dict[str, Sequence[float]], seeds: Sequence[int], effect: float, low: float, high: float,
                statistic: str = "statistic", threshold: float | None = None, title: str = "",
                verdict: str = "") -> go.Figure:
    """A claim of the ledger (:mod:`workbench.claims`): left, each arm's statistic per seed (a line joins the seeds'
    pairs; a one-arm claim draws its threshold as a dashed line); right, the mean effect (a − b, or a − threshold)
    with its interval and the zero line the verdict is read against."""
    if not values or not any(len(v) for v in values.values()):
        return _empty(title or "claim", "no per-seed values (the claim has not run)")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3],
                        subplot_titles=(f"{statistic} per seed", "effect and interval"))
    for i, (arm, vals) in enumerate(values.items()):
        fig.add_trace(go.Scatter(x=[str(s) for s in seeds], y=list(vals), mode="markers+lines", name=arm,
                                 marker=dict(size=10, color=PALETTE[i % len(PALETTE)]),
                                 line=dict(dash="dot", width=1)), row=1, col=1)
    if threshold is not None:
        fig.add_hline(y=threshold, line=dict(dash="dash", color="#7f7f7f"), annotation_text="threshold",
                      row=1, col=1)
    finite = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (low, high))
    fig.add_trace(go.Scatter(x=["effect"], y=[effect], mode="markers", name="mean effect", showlegend=False,
                             marker=dict(size=12, color="black"),
                             error_y=dict(type="data", symmetric=False, array=[high - effect] if finite else None,
                                          arrayminus=[effect - low] if finite else None)), row=1, col=2)
    fig.add_hline(y=0, line=dict(color="#d62728", width=1), row=1, col=2)
    fig.update_xaxes(title_text="seed", row=1, col=1)
    fig.update_layout(**SUBPLOTS, title=f"{title}{': ' + verdict if verdict else ''}")
    return fig


CAPTIONS["claim_seeds"] = ("A claim of the ledger: each arm's statistic per training seed (left; the same seed trains "
                           "both arms) and the mean paired effect with its interval (right). The claim reproduces "
                           "when the whole interval lies on the claimed side of the red zero line.")
