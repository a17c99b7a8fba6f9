"""LoRA Workbench dashboard: learn, train live, compare, inspect, landscapes, present (a projector view), runs.

    workbench dashboard [--host 127.0.0.1] [--port 7860] [--runs runs] [--data-dir ../shared/data]
    python app.py ...   (the same, from a checkout)

Layout only: every callback lives in ``callbacks.py``, every figure (and its caption, shown under the plot) comes
from ``workbench.figures``. Binds 127.0.0.1 by default, no share link, Gradio analytics off, nothing loaded from the
internet (system fonts only; KaTeX's fonts ship with Gradio).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported

import gradio as gr  # noqa: E402
from gradio import component_meta  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from .. import figures  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from ..recipes import recipe_names  # noqa: E402
from ..tasks.base import restrict_paths  # noqa: E402
from . import byo, claims_view  # noqa: E402
from . import callbacks as cb  # noqa: E402
from .arguments import DEFAULT_HOST, DEFAULT_PORT, add_arguments  # noqa: E402
from .learn import recipe_card  # noqa: E402

THEME = gr.themes.Default(font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                          font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"])
POLL_SECONDS = 0.3
# the Learn card's formulas at 1.6x the text size (KaTeX's own 1.21x drew the double-struck ℝ of B ∈ ℝ^{d_out×r}
# with strokes so thin that it all but vanished in screenshots and at ordinary zoom)
CSS = (".status {min-height: 2.5em}\n"
       ".learn-card .katex {font-size: 1.6em}\n"
       ".caption p {font-size: var(--text-sm); color: var(--body-text-color); opacity: 0.75; margin: 0 0.5em}")
DEFAULT_TASK = "synthetic:lowrank"
SOURCED_WIDTHS = ["15%", "12%", "7%", "24%", "42%"]  # field, value, from, allowed, help
OPTION_WIDTHS = ["15%", "12%", "28%", "45%"]  # field, value, allowed, help
FORM_COLUMNS = ["field", "value"]  # what the callbacks read from a form
FORM_LABEL = "(edit the value column; 'from' says where a value came from: default, task or preset)"


@contextlib.contextmanager
def _no_stub_files():
    """Define Gradio components without the ``.pyi`` stub Gradio's metaclass writes next to their module (meant
    for custom-component projects; here it would write ``app.pyi`` into the installed package at import)."""
    write, component_meta.create_or_modify_pyi = component_meta.create_or_modify_pyi, lambda *args: None
    try:
        yield
    finally:
        component_meta.create_or_modify_pyi = write


def _short(label: str | None) -> str:
    """A label without its trailing hint in parentheses ("training settings (edit the value ...)")."""
    return (label or "table").split(" (")[0]


def _table_message(label: str, columns: Sequence[str], got: Any) -> str:
    wanted = f"columns {', '.join(columns)}" if columns else "a header row and rows of cells"
    shown = (", ".join(map(str, got.headers or [])) or "no columns") if hasattr(got, "headers") else repr(got)[:60]
    return f"{label}: the table must have {wanted} (got {shown})"


class _CheckedTable:
    """A Dataframe's data model (Gradio validates the sent table with it before ``preprocess``) that turns a
    malformed table (text, a number, rows of the wrong kind) into a message naming the table, not a bare "Error"."""

    def __init__(self, model: Any, label: str, columns: Sequence[str]):
        self._model, self._label, self._columns = model, label, columns

    def model_validate(self, obj: Any, *args, **kwargs):
        try:
            return self._model.model_validate(obj, *args, **kwargs)
        except (ValidationError, TypeError, ValueError):
            raise gr.Error(_table_message(self._label, self._columns, obj)) from None

    def __getattr__(self, name: str):  # model_json_schema, from_json, ...: the model's own
        if name.startswith("_"):  # copy/pickle protocol and our own fields: not the model's
            raise AttributeError(name)
        return getattr(self._model, name)


# The app's sliders, checkbox groups and tables. A hand-written client may send any JSON for them; Gradio's own
# preprocessing then fails with a TypeError or a pydantic error, which the page shows as a bare "Error". These
# refuse such a value with a message naming the field (its label) and what it allows.
with _no_stub_files():
    class Slider(gr.Slider):
        """``gr.Slider`` refusing a value that is not a number in its range (text, None, a list, NaN)."""

        def preprocess(self, payload: Any) -> float:
            number = isinstance(payload, (int, float)) and not isinstance(payload, bool)
            if not number or not self.minimum <= payload <= self.maximum:  # NaN fails the comparison too
                raise gr.Error(f"{_short(self.label)}: {payload!r:.60} is not a number in "
                               f"[{self.minimum:g}, {self.maximum:g}]")
            return super().preprocess(payload)

    class CheckboxGroup(gr.CheckboxGroup):
        """``gr.CheckboxGroup`` refusing anything but a list (Gradio's own check names a value not among the
        choices)."""

        def preprocess(self, payload: Any) -> list:
            if not isinstance(payload, list):
                names = ", ".join(str(value) for _, value in self.choices)
                raise gr.Error(f"{_short(self.label)}: {payload!r:.60} is not a list; choose one or more of {names}")
            return super().preprocess(payload)

    class Dataframe(gr.Dataframe):
        """``gr.Dataframe`` refusing what is not a table (text, a number, None) or lacks the ``columns`` the
        callbacks read (a form's ``field`` and ``value``; the Runs table's ``id``). ``label`` names it in messages
        even where it is not shown."""

        def __init__(self, value: Any = None, *, columns: Sequence[str] = (), **kwargs):
            super().__init__(value=value, **kwargs)
            self.columns = list(columns)
            self.data_model = _CheckedTable(type(self).data_model, _short(self.label), self.columns)

        # Gradio reads a component's settings from its __init__'s signature (the page's config, gr.update's keys,
        # the per-session copies it builds): gr.Dataframe's, plus ``columns``
        __init__.__signature__ = inspect.signature(gr.Dataframe.__init__).replace(parameters=[
            *inspect.signature(gr.Dataframe.__init__).parameters.values(),
            inspect.Parameter("columns", inspect.Parameter.KEYWORD_ONLY, default=())])

        def get_config(self, cls=None) -> dict[str, Any]:
            config = super().get_config(cls)
            config.pop("columns", None)  # the server's check, not a setting of the page's table
            return config

        def preprocess(self, payload: Any):
            empty = payload is not None and not payload.headers and not any(payload.data)  # no rows: nothing to read
            if payload is None or (not empty and any(c not in (payload.headers or []) for c in self.columns)):
                raise gr.Error(_table_message(_short(self.label), self.columns, payload))
            return super().preprocess(payload)


def _safe(fn, n_outputs: int):
    """Run a callback; on bad input show the message in a toast and leave every output unchanged."""
    def wrapped(*args):
        try:
            return fn(*args)
        except (ConfigError, FileNotFoundError, ValueError) as exc:
            gr.Warning(str(exc))
        except gr.Error:
            raise
        except Exception as exc:  # a bug or an input no check foresaw: name the callback, never a bare "Error"
            gr.Warning(f"{_name(fn)}: {type(exc).__name__}: {exc}")
        return tuple(gr.skip() for _ in range(n_outputs)) if n_outputs > 1 else gr.skip()
    return wrapped


def _name(fn) -> str:
    name = getattr(fn, "__name__", "callback")
    return "the callback" if name == "<lambda>" else name


def _owned(fn, n_outputs: int):
    """:func:`_safe` for callbacks that start or stop jobs: they get the browser session's id as ``owner``, so a
    session has one job of a kind at a time and Stop reaches all of them (``jobs.py``)."""
    def wrapped(request: gr.Request, *args):  # Gradio passes the request to a parameter annotated gr.Request
        owner = getattr(request, "session_hash", None)
        return _safe(functools.wraps(fn)(lambda *a: fn(*a, owner=owner)), n_outputs)(*args)  # its name in messages
    return wrapped


def _confirmable(fn):
    """For Compare and Landscape: ``fn(*args, confirm=..., owner=...)`` starts a job or raises
    :class:`~workbench.dashboard.callbacks.NeedsConfirmation` with its estimated cost. Outputs: the job id, the
    status line (the estimate, when asking) and the "Start anyway" button (shown while asking). The returned pair
    of handlers is (first press, confirmed press)."""
    def handler(confirm: bool):
        def wrapped(request: gr.Request, *args):
            owner = getattr(request, "session_hash", None)
            try:
                return fn(*args, confirm=confirm, owner=owner), gr.skip(), gr.update(visible=False)
            except cb.NeedsConfirmation as exc:
                return gr.skip(), f"⚠️ {exc}", gr.update(visible=True)
            except (ConfigError, FileNotFoundError, ValueError) as exc:
                gr.Warning(str(exc))
            except gr.Error:
                raise
            except Exception as exc:  # as in _safe: name the callback
                gr.Warning(f"{_name(fn)}: {type(exc).__name__}: {exc}")
            return gr.skip(), gr.skip(), gr.skip()
        return wrapped
    return handler(False), handler(True)


def captioned_plot(label: str, builder: str, kind: str | None = None, elem_id: str | None = None) -> gr.Plot:
    """A plot for ``figures.<builder>`` with that figure's caption under it (what it shows, what to look for)."""
    with gr.Column(min_width=320):
        shown = gr.Plot(label=label, elem_id=elem_id)
        gr.Markdown(figures.caption(builder, kind), elem_classes="caption")
    return shown


def task_options_form(task_name: str) -> gr.Dataframe:
    """The task's options as a form generated from its declaration, folded away (most runs keep the defaults)."""
    with gr.Accordion("task options (from the task's declaration; edit the value column)", open=False):
        return Dataframe(cb.task_options_form(task_name), label="task options", show_label=False, interactive=True,
                         columns=FORM_COLUMNS, static_columns=[0, 2, 3], wrap=True, column_widths=OPTION_WIDTHS)


def open_adapter_entry(task_list: list[str]) -> dict[str, Any]:
    """Issue 22: open an adapter folder (PEFT's or the workbench's) on a task's model, from the server or an upload;
    it becomes a run with every probe on it, opened in Inspect (``byo.start_import``)."""
    with gr.Accordion("Open an adapter folder (PEFT or workbench) on a task's model", open=False,
                      elem_id="byo-entry"):
        gr.Markdown("Inspect an adapter trained elsewhere: a **PEFT** folder (`adapter_config.json` + "
                    "`adapter_model.safetensors`: LoRA, rsLoRA, DoRA, AdaLoRA, VeRA, FourierFT, RandLoRA, Uni-LoRA) "
                    "or a **workbench** adaptation (`adaptation.json` + `adapter.safetensors`), on the model of the "
                    "task it was trained on. It is probed once (every probe) and stored as a run.")
        with gr.Row():
            task = gr.Dropdown(task_list, value=DEFAULT_TASK, label="task whose model the adapter adapts",
                               elem_id="byo-task")
            folder = gr.Textbox(label="adapter folder on the server", elem_id="byo-folder",
                                placeholder="a folder inside the server's --data-dir (blank: use the upload)")
        options = task_options_form(DEFAULT_TASK)
        upload = gr.File(label="or upload its files (or a zip of them)", file_count="multiple",
                         file_types=[".json", ".safetensors", ".zip"], elem_id="byo-upload")
        button = gr.Button("Open adapter", variant="primary", elem_id="byo-open")
        status = gr.Markdown(byo.import_status(None), elem_classes="status", elem_id="byo-status")
    return {"task": task, "folder": folder, "options": options, "upload": upload, "button": button,
            "status": status, "job": gr.State(None), "seen": gr.State(-1)}


def generate_entry(runs_root: str) -> dict[str, Any]:
    """Issue 21: a LoRA decoded by a generator saved in the store (``generators/``) at a chosen condition, stored as
    a run flagged as generated and opened in Inspect (``byo.start_generation``)."""
    with gr.Accordion("Generate a LoRA for a condition (ICM-LoRA generator)", open=False, elem_id="gen-entry"):
        with gr.Row():
            pick = gr.Dropdown(byo.generator_options(runs_root), label="saved generator", allow_custom_value=True,
                               elem_id="gen-pick", scale=3)
            reload = gr.Button("Reload generators", size="sm", elem_id="gen-reload", scale=1)
            condition = gr.Textbox("0.5", label="condition value", elem_id="gen-condition", scale=1)
            extrapolate = gr.Checkbox(False, label="outside the trained range anyway (the run is flagged)",
                                      elem_id="gen-extrapolate", scale=1)
        note = gr.Markdown(byo.generator_note(runs_root, None), elem_id="gen-note")
        button = gr.Button("Generate", variant="primary", elem_id="gen-go")
        status = gr.Markdown(byo.generation_status(None), elem_classes="status", elem_id="gen-status")
    return {"pick": pick, "reload": reload, "condition": condition, "extrapolate": extrapolate, "note": note,
            "button": button,
            "status": status, "job": gr.State(None), "seen": gr.State(-1)}


def _starts_job(fn, status):
    """For the Runs tab's entries: ``fn(*args, owner=...)`` starts a job; outputs the job id and ``status(job)``.
    A refusal (a bad folder, a condition outside the trained range) is shown in the entry's status box, where the
    user looks, with the library's message; the job id is left as it was."""
    def wrapped(request: gr.Request, *args):
        owner = getattr(request, "session_hash", None)
        try:
            job_id = fn(*args, owner=owner)
            return job_id, status(job_id)
        except (ConfigError, FileNotFoundError, ValueError) as exc:
            return gr.skip(), f"**Refused:** {exc}"
        except gr.Error:
            raise
        except Exception as exc:  # as in _safe: name the callback, never a bare "Error"
            return gr.skip(), f"**Refused:** {_name(fn)}: {type(exc).__name__}: {exc}"
    return wrapped


WARM_UP_EXIT_SECONDS = 60  # how long the interpreter's exit waits for an unfinished warm-up
_warm_up: threading.Thread | None = None
_WARM_UP_LOCK = threading.Lock()


def start_warm_up() -> threading.Thread:
    """Start :func:`~workbench.dashboard.callbacks.warm_up` in the background, once per process (what it warms is
    the process's), and have the interpreter's exit wait for it: a process ending while the thread is still inside
    ``import torch._dynamo`` aborts ("terminate called without an active exception", exit status 134)."""
    global _warm_up
    with _WARM_UP_LOCK:
        if _warm_up is None:
            _warm_up = threading.Thread(target=cb.warm_up, name="warm-up", daemon=True)
            _warm_up.start()
            atexit.register(_warm_up.join, WARM_UP_EXIT_SECONDS)
    return _warm_up


def build_app(runs_root: str = "runs") -> gr.Blocks:
    variants = cb.variant_names()
    task_list = cb.task_names()
    start_warm_up()  # the first Run starts sooner

    with gr.Blocks(title="LoRA Workbench", analytics_enabled=False) as demo:
        root = gr.State(runs_root)
        gr.Markdown("# LoRA Workbench\nTrain, inspect and compare LoRA variants side by side.")
        with gr.Tabs() as tabs:

            # ---- Learn ---------------------------------------------------------------------------------------
            with gr.Tab("Learn", id="learn"):
                with gr.Row():
                    learn_variant = gr.Dropdown(variants, value="lora", label="variant")
                    learn_task = gr.Dropdown(task_list, value="synthetic:lowrank", label="count parameters on task")
                learn_md = gr.Markdown(latex_delimiters=[{"left": "$", "right": "$", "display": False}],
                                       elem_classes="learn-card")
                learn_recipe = gr.Dropdown(["none"] + recipe_names(), value="none",
                                           label="optimizer recipe (how an adapter is trained, not its shape)",
                                           elem_id="learn-recipe")
                learn_recipe_md = gr.Markdown(elem_classes="recipe-card", elem_id="learn-recipe-card")
                demo_btn = gr.Button("Watch a 10-second demo on synthetic:lowrank", variant="primary")
                demo_status = gr.Markdown(elem_classes="status")
                demo_config = gr.Markdown(elem_id="demo-config")
                with gr.Row():
                    demo_loss = captioned_plot("loss", "loss_curves")
                    demo_spectra = captioned_plot("spectrum of ΔW", "spectra")
                demo_job, demo_seen = gr.State(None), gr.State(-1)
                learn_claims_md = gr.Markdown(elem_id="learn-claims")
                with gr.Row():
                    learn_claim = gr.Dropdown([], label="claim to rerun", elem_id="learn-claim")
                    claim_btn = gr.Button("Rerun this claim live", elem_id="learn-claim-rerun")
                claim_status = gr.Markdown(elem_classes="status", elem_id="learn-claim-status")
                claim_plot = captioned_plot("the claim: per-seed values and effect", "claim_seeds",
                                            elem_id="learn-claim-plot")
                claim_job = gr.State(None)

            # ---- Train ---------------------------------------------------------------------------------------
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    task = gr.Dropdown(task_list, value=DEFAULT_TASK, label="task")
                    variant = gr.Dropdown(variants, value="lora", label="variant")
                settings_form, config_form, preset_text = cb.train_forms(DEFAULT_TASK, "lora")
                preset_md = gr.Markdown(preset_text, elem_classes="preset")
                task_opts = task_options_form(DEFAULT_TASK)
                config = Dataframe(config_form, label=f"hyper-parameters of the variant {FORM_LABEL}",
                                   columns=FORM_COLUMNS, interactive=True, static_columns=[0, 2, 3, 4], wrap=True,
                                   column_widths=SOURCED_WIDTHS, elem_id="train-config")
                settings = Dataframe(settings_form, label=f"training settings {FORM_LABEL}", interactive=True,
                                     columns=FORM_COLUMNS, static_columns=[0, 2, 3, 4], wrap=True,
                                     column_widths=SOURCED_WIDTHS, max_height=330, elem_id="train-settings")
                recipe_table, recipe_text = cb.recipe_form(settings_form, "lora")
                recipe_md = gr.Markdown(recipe_text, elem_id="train-recipe")
                recipe_opts = Dataframe(recipe_table, label=f"options of the recipe {FORM_LABEL}",
                                        columns=FORM_COLUMNS, interactive=True, static_columns=[0, 2, 3], wrap=True,
                                        elem_id="train-recipe-options")
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary")
                    stop_btn = gr.Button("Stop")
                train_status = gr.Markdown(elem_classes="status")
                with gr.Row():
                    train_smooth = Slider(0, 0.99, value=0.0, step=0.01, label="smoothing of the training loss",
                                             elem_id="train-smoothing")
                    train_scale = gr.Radio(["log", "linear"], value="log", label="loss axis", elem_id="train-scale")
                with gr.Row():
                    loss_plot = captioned_plot("loss", "loss_curves", elem_id="train-loss")
                    grad_plot = captioned_plot("gradient norms", "gradient_norms")
                train_module = gr.Dropdown([], label="module (the spectrum's layer)", allow_custom_value=True,
                                           elem_id="train-module")
                with gr.Row():
                    spec_plot = captioned_plot("spectrum of ΔW", "spectra")
                    alloc_plot = captioned_plot("allocation", "allocation_heatmap", elem_id="train-allocation")
                with gr.Row():
                    metric_plot = captioned_plot("validation metric", "validation_metric", elem_id="train-metric")
                train_job, train_seen = gr.State(None), gr.State(-1)

            # ---- Compare -------------------------------------------------------------------------------------
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    cmp_task = gr.Dropdown(task_list, value=DEFAULT_TASK, label="task")
                    cmp_seeds = gr.Textbox("0", label="seeds (comma-separated)")
                    cmp_steps = gr.Textbox("", label="steps", placeholder="blank: the task's default")
                    cmp_lr = gr.Textbox("sweep", label="learning rate (a number, or 'sweep')")
                    cmp_budget = gr.Textbox("", label="parameter budget", placeholder="blank: each variant's own size")
                cmp_task_opts = task_options_form(DEFAULT_TASK)
                cmp_variants = CheckboxGroup(variants + [f"lora+{r}" for r in recipe_names() if r != "adamw"],
                                                value=["lora", "dora"],
                                                label="variants (lora+recipe: LoRA trained by that recipe)")
                with gr.Row():
                    cmp_btn = gr.Button("Compare", variant="primary")
                    cmp_confirm = gr.Button("Start anyway", variant="stop", visible=False)
                    cmp_stop = gr.Button("Stop")
                cmp_status = gr.Markdown(elem_classes="status")
                cmp_module = gr.Dropdown([], label="module (aligns the side-by-side panels)", allow_custom_value=True)
                cmp_summary = Dataframe(label="results by variant (mean ± sd over seeds)", interactive=False,
                                           wrap=True, elem_id="cmp-summary")
                cmp_runs = Dataframe(label="runs (click a column title to sort)", interactive=False, wrap=True,
                                        elem_id="cmp-runs")
                cmp_sweep = Dataframe(label="learning-rate sweep (the other rates tried on the first seed)",
                                         interactive=False, wrap=True, elem_id="cmp-sweep", visible=False)
                cmp_sweep_plot = captioned_plot("learning-rate sweep", "lr_sweep", elem_id="cmp-sweep-plot")
                cmp_pareto = captioned_plot("metric against trainable parameters", "pareto_params",
                                            elem_id="cmp-pareto")
                cmp_csv = gr.DownloadButton("Export CSV", visible=False, elem_id="cmp-csv")
                with gr.Row():
                    cmp_smooth = Slider(0, 0.99, value=0.0, step=0.01, label="smoothing of the training loss")
                    cmp_scale = gr.Radio(["log", "linear"], value="log", label="loss axis")
                cmp_loss = captioned_plot("loss curves", "loss_curves")
                cmp_spectra = captioned_plot("spectra side by side", "small_multiples", "spectra")
                cmp_alloc = captioned_plot("allocation side by side", "small_multiples", "allocation")
                cmp_freq = captioned_plot("|DCT(ΔW)| side by side", "small_multiples", "dct")
                cmp_job, cmp_seen = gr.State(None), gr.State(-1)

            # ---- Inspect -------------------------------------------------------------------------------------
            with gr.Tab("Inspect", id="inspect") as insp_tab:
                with gr.Row():
                    insp_run = gr.Dropdown(cb.run_options(runs_root), label="saved run", allow_custom_value=True)
                    insp_refresh = gr.Button("Refresh list", size="sm")
                with gr.Row():
                    insp_step = Slider(0, 1, value=1, step=1, label="training step")
                    insp_module = gr.Dropdown([], label="module", allow_custom_value=True)
                    insp_kind = gr.Radio(["dct", "fft", "wht"], value="dct", label="frequency basis")
                insp_head = gr.Markdown()
                with gr.Row():
                    insp_spectra = captioned_plot("singular values", "spectra", elem_id="insp-spectra")
                    insp_freq = captioned_plot("frequency map", "frequency_map")
                with gr.Row():
                    insp_erank = captioned_plot("effective rank", "effective_rank_over_time")
                    insp_sim = captioned_plot("subspace similarity", "subspace_similarity")
                with gr.Row():
                    insp_grad = captioned_plot("gradient norms", "gradient_norms")
                    insp_alloc = captioned_plot("allocation", "allocation_heatmap")
                with gr.Row():
                    insp_views = captioned_plot("variant views", "variant_views")
                    insp_traj = captioned_plot("learned locations over training", "location_trajectories")
                with gr.Row():
                    insp_loss = captioned_plot("loss", "loss_curves")
                    insp_metric = captioned_plot("validation metric", "validation_metric")
                # shown only for runs that learn a magnitude (DoRA-style m): an empty panel under every other run
                # read as a broken view (issue 17)
                with gr.Column(visible=False, elem_id="insp-magnitude-box") as insp_magnitude_box:
                    insp_magnitude = captioned_plot("learned magnitudes (DoRA-style m)", "magnitude_view",
                                                    elem_id="insp-magnitude")

            # ---- Landscape -----------------------------------------------------------------------------------
            with gr.Tab("Landscape", id="landscape") as land_tab:
                with gr.Row():
                    land_run = gr.Dropdown(cb.run_options(runs_root), label="saved run", allow_custom_value=True,
                                           elem_id="land-run")
                    land_refresh = gr.Button("Refresh list", size="sm")
                    land_mode = gr.Radio(["adapter", "delta"], value="delta", label="directions in")
                    land_dims = gr.Radio(["1", "2"], value="2", label="dimensions")
                    land_steps = gr.Textbox("15", label="grid points per axis")
                    land_span = gr.Textbox("1.0", label="span")
                with gr.Row():
                    land_btn = gr.Button("Compute", variant="primary")
                    land_confirm = gr.Button("Start anyway", variant="stop", visible=False)
                    land_stop = gr.Button("Stop")
                land_md = gr.Markdown(elem_classes="status")
                land_plot = captioned_plot("loss landscape", "landscape")
                land_job, land_seen = gr.State(None), gr.State(-1)

            # ---- Present: one large figure with a selector, for a projector at 1024×768 -----------------------
            with gr.Tab("Present", id="present") as present_tab:
                with gr.Row():  # the selector beside the figure, so the figure starts high on a 768-px screen
                    with gr.Column(scale=1, min_width=180):
                        present_run = gr.Dropdown(cb.run_options(runs_root), label="run to present",
                                                  allow_custom_value=True, elem_id="present-run")
                        present_which = gr.Radio(list(cb.PRESENT_VIEWS), value="loss", label="view")
                    with gr.Column(scale=4):
                        present_plot = gr.Plot(show_label=False, elem_id="present-plot")
                        present_caption = gr.Markdown(figures.caption("loss_curves"), elem_classes="caption")

            # ---- Runs ----------------------------------------------------------------------------------------
            with gr.Tab("Runs", id="runs") as runs_tab:
                with gr.Row():
                    runs_query = gr.Textbox(label="filter (any text: variant, task, status ...)")
                    runs_refresh = gr.Button("Refresh", size="sm")
                runs_df = Dataframe(cb.runs_table(runs_root), interactive=False, wrap=True, columns=["id"],
                                       label="runs (click a row to pick it; a comparison's runs are listed together)",
                                       elem_id="runs-table")
                with gr.Row():
                    runs_pick = gr.Dropdown(cb.run_options(runs_root), label="run", allow_custom_value=True,
                                            elem_id="runs-pick")
                    open_btn = gr.Button("Open in Inspect")
                    code_btn = gr.Button("This run as code")
                    dl_btn = gr.Button("Prepare downloads")
                    del_btn = gr.Button("Delete run…", variant="stop")
                    del_confirm = gr.Button("Confirm delete", variant="stop", visible=False)
                runs_msg = gr.Markdown()
                runs_files = gr.File(label="adapter (safetensors), metrics (CSV), PEFT export", file_count="multiple")
                byo_parts = open_adapter_entry(task_list)
                gen_parts = generate_entry(runs_root)


        # ---- events --------------------------------------------------------------------------------------
        timer = gr.Timer(POLL_SECONDS)

        learn_inputs = [learn_variant, learn_task]
        for trigger in (demo.load, learn_variant.change, learn_task.change):
            trigger(_safe(cb.learn_card, 1), learn_inputs, learn_md)
        learn_recipe.change(_safe(lambda name: "" if name in (None, "none") else recipe_card(name), 1), learn_recipe,
                            learn_recipe_md)
        demo_btn.click(_owned(cb.start_demo, 1), learn_variant, demo_job)

        def on_claims(variant_name, recipe_name):  # the claims of the variant's and the recipe's papers
            choices = claims_view.claim_choices(variant_name, recipe_name)
            return (claims_view.claims_section(variant_name, recipe_name),
                    gr.update(choices=choices, value=choices[0] if choices else None))

        for trigger in (demo.load, learn_variant.change, learn_recipe.change):
            trigger(_safe(on_claims, 2), [learn_variant, learn_recipe], [learn_claims_md, learn_claim])
        # the rerun streams its own progress (a generator) instead of adding a handler to the shared timer, whose
        # every extra listener costs each tick a round trip while the other tabs train
        claim_btn.click(_owned(claims_view.start_claim, 1), learn_claim, claim_job).then(
            claims_view.follow, claim_job, [claim_status, claim_plot], show_progress="hidden")

        def poll_demo(job_id, seen):
            version = cb.job_version(job_id)
            if version == seen:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
            loss, _, spectra, _ = cb.live_figures(job_id)
            return cb.job_status(job_id), cb.demo_config_text(job_id), loss, spectra, version

        timer.tick(poll_demo, [demo_job, demo_seen], [demo_status, demo_config, demo_loss, demo_spectra, demo_seen],
                   show_progress="hidden")

        def clear_demo():  # a new variant: the old variant's demo is not shown under the new card
            empty = cb.live_figures(None)[0]
            return None, -1, "", "", empty, empty

        learn_variant.change(clear_demo, None, [demo_job, demo_seen, demo_status, demo_config, demo_loss,
                                                demo_spectra], show_progress="hidden")

        # a new (task, variant) refills the forms with what train() would use: task defaults and the preset
        def on_task(task_name, variant_name, options):
            return (*cb.train_forms(task_name, variant_name), cb.task_options_form(task_name, options))

        task.change(_safe(on_task, 4), [task, variant, task_opts], [settings, config, preset_md, task_opts])
        variant.change(_safe(cb.train_forms, 3), [task, variant], [settings, config, preset_md])
        cmp_task.change(_safe(cb.task_options_form, 1), [cmp_task, cmp_task_opts], cmp_task_opts)
        # the recipe's own form follows the recipe the settings name (its Config drives it, as every form)
        settings.change(_safe(cb.recipe_form, 2), [settings, variant], [recipe_opts, recipe_md])
        variant.change(_safe(cb.recipe_form, 2), [settings, variant], [recipe_opts, recipe_md])
        run_btn.click(_owned(cb.start_training, 1), [task, variant, settings, config, root, task_opts, recipe_opts],
                      train_job)
        stop_btn.click(_owned(cb.stop_job, 1), train_job, train_status)

        def poll_train(job_id, seen, module, smoothing, scale):
            version = cb.job_version(job_id)
            if version == seen:
                return (gr.skip(),) * 7 + (seen,)
            job = cb.jobs.get(job_id)
            modules = cb.modules_of([job.run]) if job is not None and job.run is not None else []
            module = module if module in modules else (modules[0] if modules else None)
            return (cb.job_status(job_id), gr.update(choices=cb.module_choices(modules), value=module),
                    *cb.live_figures(job_id, module, smoothing, scale), cb.live_metric(job_id), version)

        timer.tick(poll_train, [train_job, train_seen, train_module, train_smooth, train_scale],
                   [train_status, train_module, loss_plot, grad_plot, spec_plot, alloc_plot, metric_plot,
                    train_seen], show_progress="hidden")
        train_module.input(lambda j, m: cb.live_figures(j, m)[2], [train_job, train_module], spec_plot)
        for trigger in (train_smooth.release, train_scale.input):
            trigger(_safe(lambda j, w, sc: cb.live_figures(j, None, w, sc)[0], 1),
                    [train_job, train_smooth, train_scale], loss_plot)

        cmp_inputs = [cmp_task, cmp_variants, cmp_seeds, cmp_steps, cmp_lr, root, cmp_task_opts, cmp_budget]
        cmp_first, cmp_anyway = _confirmable(cb.start_comparison)
        cmp_btn.click(cmp_first, cmp_inputs, [cmp_job, cmp_status, cmp_confirm])
        cmp_confirm.click(cmp_anyway, cmp_inputs, [cmp_job, cmp_status, cmp_confirm])
        cmp_stop.click(_owned(lambda job_id, owner=None: (cb.jobs.stop(job_id, owner), cb.comparison_status(job_id))[1],
                              1), cmp_job, cmp_status)
        cmp_views = [cmp_summary, cmp_runs, cmp_sweep, cmp_loss, cmp_spectra, cmp_alloc, cmp_freq]

        def poll_compare(job_id, seen, module, smoothing, scale):
            version = cb.job_version(job_id)
            if version == seen:
                return (gr.skip(),) * 12 + (seen,)
            job = cb.jobs.get(job_id)
            modules = cb.modules_of(job.runs) if job else []
            module = module if module in modules else (modules[0] if modules else None)
            csv = cb.comparison_csv(job_id) if job is not None and job.done else None
            return (cb.comparison_status(job_id), gr.update(choices=cb.module_choices(modules), value=module),
                    gr.update(value=csv, visible=csv is not None), cb.comparison_sweep(job_id),
                    cb.comparison_pareto(job_id), *comparison_views(job_id, module, smoothing, scale), version)

        def comparison_views(job_id, module, smoothing=0.0, scale="log"):
            summary, runs, sweep, *figs = cb.comparison_view(job_id, module, smoothing, scale)
            return (summary, runs, gr.update(value=sweep, visible=not sweep.empty), *figs)

        timer.tick(poll_compare, [cmp_job, cmp_seen, cmp_module, cmp_smooth, cmp_scale],
                   [cmp_status, cmp_module, cmp_csv, cmp_sweep_plot, cmp_pareto, *cmp_views, cmp_seen],
                   show_progress="hidden")
        for trigger in (cmp_module.input, cmp_smooth.release, cmp_scale.input):
            trigger(_safe(comparison_views, 7), [cmp_job, cmp_module, cmp_smooth, cmp_scale], cmp_views)

        # the run pickers list what is on disk: on page load, on opening a tab, on Refresh and when a job ends
        def refresh_choices(root_dir):
            choices = cb.run_options(root_dir)
            return (gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices))

        pickers = [insp_run, land_run, runs_pick]
        for trigger in (demo.load, insp_refresh.click, land_refresh.click, insp_tab.select, land_tab.select,
                        runs_tab.select):
            trigger(refresh_choices, root, pickers, show_progress="hidden")

        def refresh_on_job_end(root_dir, seen, query, *job_ids):  # and the Runs table, as runs land
            ended = cb.jobs_finished(job_ids)
            if ended == seen:
                return (gr.skip(),) * 4 + (seen,)
            return (*refresh_choices(root_dir), cb.runs_table(root_dir, query), ended)

        for trigger in (demo.load, present_tab.select):
            trigger(lambda r: gr.update(choices=cb.run_options(r)), root, present_run, show_progress="hidden")
        for trigger in (present_run.change, present_which.change):
            trigger(_safe(cb.present_view, 2), [root, present_run, present_which], [present_plot, present_caption])

        ended_seen = gr.State(0)
        timer.tick(refresh_on_job_end, [root, ended_seen, runs_query, demo_job, train_job, cmp_job],
                   pickers + [runs_df, ended_seen], show_progress="hidden")

        def on_pick_run(root_dir, run_id):
            lo, hi, modules = cb.run_steps(root_dir, run_id)
            module = modules[0] if modules else None
            kind = cb.frequency_basis_of(root_dir, run_id)
            cadence = cb.snapshot_cadence(root_dir, run_id)  # each slider stop is a snapshot
            return (gr.update(minimum=lo, maximum=hi, value=hi, step=cadence),
                    gr.update(choices=cb.module_choices(modules), value=module), kind,
                    *cb.inspect_view(root_dir, run_id, hi, module, kind), cb.inspect_magnitudes(root_dir, run_id),
                    gr.update(visible=cb.learns_magnitudes(root_dir, run_id)))

        insp_outputs = [insp_head, insp_spectra, insp_freq, insp_erank, insp_sim, insp_grad, insp_alloc, insp_views,
                        insp_traj, insp_loss, insp_metric]
        insp_run.change(_safe(on_pick_run, 16), [root, insp_run],
                        [insp_step, insp_module, insp_kind] + insp_outputs + [insp_magnitude, insp_magnitude_box])
        # user changes only: the step's number box fires input at each keystroke (release only on blur), the slider
        # while dragged; always_last draws the latest value once the previous drawing is done
        for trigger in (insp_step.input, insp_module.input, insp_kind.input):
            trigger(_safe(cb.inspect_view, 11), [root, insp_run, insp_step, insp_module, insp_kind], insp_outputs,
                    trigger_mode="always_last")

        land_inputs = [root, land_run, land_mode, land_dims, land_steps, land_span]
        land_first, land_anyway = _confirmable(cb.start_landscape)
        land_btn.click(land_first, land_inputs, [land_job, land_md, land_confirm])
        land_confirm.click(land_anyway, land_inputs, [land_job, land_md, land_confirm])
        land_stop.click(_owned(lambda job_id, owner=None: (cb.jobs.stop(job_id, owner), cb.landscape_status(job_id))[1],
                               1), land_job, land_md)

        def poll_landscape(job_id, seen):
            version = cb.job_version(job_id)
            if version == seen:
                return gr.skip(), gr.skip(), seen
            figure = cb.landscape_figure(job_id)
            return cb.landscape_status(job_id), gr.skip() if figure is None else figure, version

        timer.tick(poll_landscape, [land_job, land_seen], [land_md, land_plot, land_seen], show_progress="hidden")

        def refresh_runs(root_dir, query):
            choices = cb.run_options(root_dir)
            return cb.runs_table(root_dir, query), gr.update(choices=choices)

        runs_refresh.click(_safe(refresh_runs, 2), [root, runs_query], [runs_df, runs_pick])
        runs_query.submit(_safe(cb.runs_table, 1), [root, runs_query], runs_df)
        dl_btn.click(_safe(cb.download_files, 1), [root, runs_pick], runs_files)

        def delete(root_dir, run_id):
            msg = cb.delete_run(root_dir, run_id)
            choices = cb.run_options(root_dir)
            return msg, cb.runs_table(root_dir), gr.update(choices=choices, value=None), gr.update(visible=False)

        # one click never deletes: the first asks (naming the run), the second button deletes
        del_btn.click(_safe(lambda r, i: (cb.delete_question(r, i), gr.update(visible=True)), 2), [root, runs_pick],
                      [runs_msg, del_confirm])
        del_confirm.click(_safe(delete, 4), [root, runs_pick], [runs_msg, runs_df, runs_pick, del_confirm])
        runs_pick.change(lambda: gr.update(visible=False), None, del_confirm, show_progress="hidden")
        code_btn.click(_safe(cb.run_as_code, 1), [root, runs_pick], runs_msg)

        def pick_row(table, evt: gr.SelectData):  # a click on a row of the Runs table picks that run
            run_id = cb.run_id_of_row(table, evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index)
            return gr.skip() if run_id is None else gr.update(value=run_id)

        runs_df.select(pick_row, runs_df, runs_pick)

        def open_in_inspect(root_dir, run_id):
            if not run_id:
                raise ConfigError("choose a run (or click its row) to open it in Inspect")
            cb.load_run(root_dir, run_id)  # an unknown or unreadable run is named here, not on the Inspect tab
            return gr.Tabs(selected="inspect"), gr.update(choices=cb.run_options(root_dir), value=run_id)

        open_btn.click(_safe(open_in_inspect, 2), [root, runs_pick], [tabs, insp_run])

        # the Runs tab's two entries: each starts a job; when it has stored its run, Inspect opens on it
        byo_parts["task"].change(_safe(cb.task_options_form, 1), [byo_parts["task"], byo_parts["options"]],
                                 byo_parts["options"])
        byo_parts["button"].click(_starts_job(byo.start_import, byo.import_status),
                                  [byo_parts["task"], byo_parts["options"], byo_parts["folder"], byo_parts["upload"],
                                   root], [byo_parts["job"], byo_parts["status"]])
        gen_parts["button"].click(_starts_job(byo.start_generation, byo.generation_status),
                                  [root, gen_parts["pick"], gen_parts["condition"], gen_parts["extrapolate"]],
                                  [gen_parts["job"], gen_parts["status"]])

        def reload_generators(root_dir, name):
            choices = byo.generator_options(root_dir)
            name = name if name in [value for _, value in choices] else None
            return gr.update(choices=choices, value=name), byo.generator_note(root_dir, name)

        for trigger in (gen_parts["reload"].click, runs_tab.select):
            trigger(_safe(reload_generators, 2), [root, gen_parts["pick"]], [gen_parts["pick"], gen_parts["note"]],
                    show_progress="hidden")
        gen_parts["pick"].input(_safe(byo.generator_note, 1), [root, gen_parts["pick"]], gen_parts["note"])

        def poll_entry(status):
            def poll(job_id, seen, root_dir):
                version = cb.job_version(job_id)
                if version == seen:
                    return (gr.skip(),) * 6 + (seen,)
                run = byo.finished_run(job_id)
                if run is None:
                    return (status(job_id),) + (gr.skip(),) * 5 + (version,)
                choices = cb.run_options(root_dir)
                return (status(job_id), gr.Tabs(selected="inspect"), gr.update(choices=choices, value=run.id),
                        gr.update(choices=choices), gr.update(choices=choices), cb.runs_table(root_dir), version)
            return poll

        for parts, status in ((byo_parts, byo.import_status), (gen_parts, byo.generation_status)):
            timer.tick(poll_entry(status), [parts["job"], parts["seen"], root],
                       [parts["status"], tabs, insp_run, land_run, runs_pick, runs_df, parts["seen"]],
                       show_progress="hidden")
    demo.queue(default_concurrency_limit=4)
    return demo


#: the largest file Gradio's upload route accepts: the Runs tab's "open an adapter" takes an adapter's files (a LoRA of
#: the dashboard's tasks' models is well under 1 MB: MiniLM, r=8 on query and value, is 0.3 MB), and nothing larger
#: can fill the disk through it; cross-origin posts are refused anyway (issue 16)
MAX_UPLOAD = "8mb"


class SameOriginOnly:
    """ASGI middleware: a request that changes something (any method but GET, HEAD, OPTIONS) and carries an
    ``Origin`` other than the server's own is answered 403. Browsers send ``Origin`` on cross-site posts, and a form
    post needs no CORS preflight, so without this any web page the user opens could post to the dashboard."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") not in ("GET", "HEAD", "OPTIONS"):
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and urlsplit(origin).netloc != host:
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": b"cross-origin request refused"})
                return
        await self.app(scope, receive, send)


def launch(demo: gr.Blocks, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **kwargs):
    """Launch with the project's safe defaults: local only, no share link, no SSR, system fonts, uploads capped at
    :data:`MAX_UPLOAD`, Gradio's ``/monitoring`` routes off, cross-origin posts refused (:class:`SameOriginOnly`,
    ``strict_cors``), and downloads served from the temporary folder they are built in (``download_files``).
    ``show_error``: the callbacks catch their own exceptions (:func:`_safe`), so what reaches Gradio is its own
    input processing, e.g. a posted file path outside the upload folder, refused and now named instead of a bare
    "None" (tests/test_fuzz.py)."""
    options = {"max_file_size": MAX_UPLOAD, "enable_monitoring": False, "strict_cors": True, "show_error": True,
               "app_kwargs": {"middleware": [Middleware(SameOriginOnly)]}, **kwargs}
    return demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, theme=THEME, css=CSS,
                       footer_links=[], **options)


def configure(args: argparse.Namespace) -> None:
    """The process settings of a server (not of :func:`build_app`, so library users and in-process tests keep no
    limit): ``--data-dir`` becomes the text tasks' default folder, and the only folder a form's ``data_dir`` or
    local ``model`` may name (:func:`~workbench.tasks.base.restrict_paths`). With neither ``--data-dir`` nor
    WORKBENCH_DATA_DIR, every local folder is refused; hub ids and the default folder still work (issue 16.11)."""
    if args.data_dir:
        os.environ["WORKBENCH_DATA_DIR"] = args.data_dir
    data = args.data_dir or os.environ.get("WORKBENCH_DATA_DIR")
    restrict_paths([Path(data)] if data else [])  # text tasks may read only the data folder the server was given


def serve(args: argparse.Namespace) -> None:
    """Build and launch from parsed :func:`~workbench.dashboard.arguments.add_arguments` options."""
    configure(args)
    launch(build_app(args.runs), args.host, args.port)


def main(argv: list[str] | None = None) -> None:
    serve(add_arguments(argparse.ArgumentParser(description="LoRA Workbench dashboard")).parse_args(argv))


if __name__ == "__main__":
    main()
