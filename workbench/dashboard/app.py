"""LoRA Workbench dashboard: learn, train live, compare, inspect, landscapes, runs.

    workbench dashboard [--host 127.0.0.1] [--port 7860] [--runs runs] [--data-dir ../shared/data]
    python app.py ...   (the same, from a checkout)

Layout only: every callback lives in ``callbacks.py``, every figure (and its caption, shown under the plot) comes
from ``workbench.figures``. Binds 127.0.0.1 by default, no share link, Gradio analytics off, nothing loaded from the
internet (system fonts only; KaTeX's fonts ship with Gradio).
"""

from __future__ import annotations

import argparse
import os
import threading
from urllib.parse import urlsplit

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from .. import figures  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from . import callbacks as cb  # noqa: E402
from .arguments import DEFAULT_HOST, DEFAULT_PORT, add_arguments  # noqa: E402

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
FORM_LABEL = "(edit the value column; 'from' says where a value came from: default, task or preset)"


def _safe(fn, n_outputs: int):
    """Run a callback; on bad input show the message in a toast and leave every output unchanged."""
    def wrapped(*args):
        try:
            return fn(*args)
        except (ConfigError, FileNotFoundError, ValueError) as exc:
            gr.Warning(str(exc))
            return tuple(gr.skip() for _ in range(n_outputs)) if n_outputs > 1 else gr.skip()
    return wrapped


def _owned(fn, n_outputs: int):
    """:func:`_safe` for callbacks that start or stop jobs: they get the browser session's id as ``owner``, so a
    session has one job of a kind at a time and Stop reaches all of them (``jobs.py``)."""
    def wrapped(request: gr.Request, *args):  # Gradio passes the request to a parameter annotated gr.Request
        owner = getattr(request, "session_hash", None)
        return _safe(lambda *a: fn(*a, owner=owner), n_outputs)(*args)
    return wrapped


def captioned_plot(label: str, builder: str, kind: str | None = None, elem_id: str | None = None) -> gr.Plot:
    """A plot for ``figures.<builder>`` with that figure's caption under it (what it shows, what to look for)."""
    with gr.Column(min_width=320):
        shown = gr.Plot(label=label, elem_id=elem_id)
        gr.Markdown(figures.caption(builder, kind), elem_classes="caption")
    return shown


def task_options_form(task_name: str) -> gr.Dataframe:
    """The task's options as a form generated from its declaration, folded away (most runs keep the defaults)."""
    with gr.Accordion("task options (from the task's declaration; edit the value column)", open=False):
        return gr.Dataframe(cb.task_options_form(task_name), show_label=False, interactive=True,
                            static_columns=[0, 2, 3], wrap=True, column_widths=OPTION_WIDTHS)


def build_app(runs_root: str = "runs") -> gr.Blocks:
    variants = cb.variant_names()
    task_list = cb.task_names()
    threading.Thread(target=cb.warm_up, name="warm-up", daemon=True).start()  # the first Run starts sooner

    with gr.Blocks(title="LoRA Workbench", analytics_enabled=False) as demo:
        root = gr.State(runs_root)
        gr.Markdown("# LoRA Workbench\nTrain, inspect and compare LoRA variants side by side.")

        # ---- Learn ---------------------------------------------------------------------------------------
        with gr.Tab("Learn"):
            with gr.Row():
                learn_variant = gr.Dropdown(variants, value="lora", label="variant")
                learn_task = gr.Dropdown(task_list, value="synthetic:lowrank", label="count parameters on task")
            learn_md = gr.Markdown(latex_delimiters=[{"left": "$", "right": "$", "display": False}],
                                   elem_classes="learn-card")
            demo_btn = gr.Button("Watch a 10-second demo on synthetic:lowrank", variant="primary")
            demo_status = gr.Markdown(elem_classes="status")
            with gr.Row():
                demo_loss = captioned_plot("loss", "loss_curves")
                demo_spectra = captioned_plot("spectrum of ΔW", "spectra")
            demo_job, demo_seen = gr.State(None), gr.State(-1)

        # ---- Train ---------------------------------------------------------------------------------------
        with gr.Tab("Train"):
            with gr.Row():
                task = gr.Dropdown(task_list, value=DEFAULT_TASK, label="task")
                variant = gr.Dropdown(variants, value="lora", label="variant")
            settings_form, config_form, preset_text = cb.train_forms(DEFAULT_TASK, "lora")
            preset_md = gr.Markdown(preset_text, elem_classes="preset")
            task_opts = task_options_form(DEFAULT_TASK)
            config = gr.Dataframe(config_form, label=f"hyper-parameters of the variant {FORM_LABEL}",
                                  interactive=True, static_columns=[0, 2, 3, 4], wrap=True,
                                  column_widths=SOURCED_WIDTHS, elem_id="train-config")
            settings = gr.Dataframe(settings_form, label=f"training settings {FORM_LABEL}", interactive=True,
                                    static_columns=[0, 2, 3, 4], wrap=True, column_widths=SOURCED_WIDTHS,
                                    max_height=330, elem_id="train-settings")
            with gr.Row():
                run_btn = gr.Button("Run", variant="primary")
                stop_btn = gr.Button("Stop")
            train_status = gr.Markdown(elem_classes="status")
            with gr.Row():
                loss_plot = captioned_plot("loss", "loss_curves", elem_id="train-loss")
                grad_plot = captioned_plot("gradient norms", "gradient_norms")
            with gr.Row():
                spec_plot = captioned_plot("spectrum of ΔW", "spectra")
                alloc_plot = captioned_plot("allocation", "allocation_heatmap", elem_id="train-allocation")
            with gr.Row():
                metric_plot = captioned_plot("validation metric", "validation_metric", elem_id="train-metric")
            train_job, train_seen = gr.State(None), gr.State(-1)

        # ---- Compare -------------------------------------------------------------------------------------
        with gr.Tab("Compare"):
            with gr.Row():
                cmp_task = gr.Dropdown(task_list, value=DEFAULT_TASK, label="task")
                cmp_seeds = gr.Textbox("0", label="seeds (comma-separated)")
                cmp_steps = gr.Textbox("", label="steps", placeholder="blank: the task's default")
                cmp_lr = gr.Textbox("sweep", label="learning rate (a number, or 'sweep')")
            cmp_task_opts = task_options_form(DEFAULT_TASK)
            cmp_variants = gr.CheckboxGroup(variants, value=["lora", "dora"], label="variants")
            with gr.Row():
                cmp_btn = gr.Button("Compare", variant="primary")
                cmp_stop = gr.Button("Stop")
            cmp_status = gr.Markdown(elem_classes="status")
            cmp_module = gr.Dropdown([], label="module (aligns the side-by-side panels)", allow_custom_value=True)
            cmp_table = captioned_plot("results", "comparison_table")
            cmp_loss = captioned_plot("loss curves", "loss_curves")
            cmp_spectra = captioned_plot("spectra side by side", "small_multiples", "spectra")
            cmp_alloc = captioned_plot("allocation side by side", "small_multiples", "allocation")
            cmp_freq = captioned_plot("|DCT(ΔW)| side by side", "small_multiples", "dct")
            cmp_job, cmp_seen = gr.State(None), gr.State(-1)

        # ---- Inspect -------------------------------------------------------------------------------------
        with gr.Tab("Inspect") as insp_tab:
            with gr.Row():
                insp_run = gr.Dropdown(cb.run_options(runs_root), label="saved run", allow_custom_value=True)
                insp_refresh = gr.Button("Refresh list", size="sm")
            with gr.Row():
                insp_step = gr.Slider(0, 1, value=1, step=1, label="training step")
                insp_module = gr.Dropdown([], label="module", allow_custom_value=True)
                insp_kind = gr.Radio(["dct", "fft", "wht"], value="dct", label="frequency basis")
            insp_head = gr.Markdown()
            with gr.Row():
                insp_spectra = captioned_plot("singular values", "spectra")
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

        # ---- Landscape -----------------------------------------------------------------------------------
        with gr.Tab("Landscape") as land_tab:
            with gr.Row():
                land_run = gr.Dropdown(cb.run_options(runs_root), label="saved run", allow_custom_value=True,
                                       elem_id="land-run")
                land_refresh = gr.Button("Refresh list", size="sm")
                land_mode = gr.Radio(["adapter", "delta"], value="delta", label="directions in")
                land_dims = gr.Radio(["1", "2"], value="2", label="dimensions")
                land_steps = gr.Textbox("15", label="grid points per axis")
                land_span = gr.Textbox("1.0", label="span")
            land_btn = gr.Button("Compute", variant="primary")
            land_md = gr.Markdown()
            land_plot = captioned_plot("loss landscape", "landscape")

        # ---- Runs ----------------------------------------------------------------------------------------
        with gr.Tab("Runs") as runs_tab:
            with gr.Row():
                runs_query = gr.Textbox(label="filter (any text: variant, task, status ...)")
                runs_refresh = gr.Button("Refresh", size="sm")
            runs_df = gr.Dataframe(cb.runs_table(runs_root), interactive=False, wrap=True)
            with gr.Row():
                runs_pick = gr.Dropdown(cb.run_options(runs_root), label="run", allow_custom_value=True)
                dl_btn = gr.Button("Prepare downloads")
                del_btn = gr.Button("Delete run", variant="stop")
            runs_msg = gr.Markdown()
            runs_files = gr.File(label="adapter (safetensors), metrics (CSV), PEFT export", file_count="multiple")

        # ---- events --------------------------------------------------------------------------------------
        timer = gr.Timer(POLL_SECONDS)

        learn_inputs = [learn_variant, learn_task]
        for trigger in (demo.load, learn_variant.change, learn_task.change):
            trigger(_safe(cb.learn_card, 1), learn_inputs, learn_md)
        demo_btn.click(_owned(cb.start_demo, 1), learn_variant, demo_job)

        def poll_demo(job_id, seen):
            version = cb.job_version(job_id)
            if version == seen:
                return gr.skip(), gr.skip(), gr.skip(), seen
            loss, _, spectra, _ = cb.live_figures(job_id)
            return cb.job_status(job_id), loss, spectra, version

        timer.tick(poll_demo, [demo_job, demo_seen], [demo_status, demo_loss, demo_spectra, demo_seen],
                   show_progress="hidden")

        # a new (task, variant) refills the forms with what train() would use: task defaults and the preset
        def on_task(task_name, variant_name, options):
            return (*cb.train_forms(task_name, variant_name), cb.task_options_form(task_name, options))

        task.change(_safe(on_task, 4), [task, variant, task_opts], [settings, config, preset_md, task_opts])
        variant.change(_safe(cb.train_forms, 3), [task, variant], [settings, config, preset_md])
        cmp_task.change(_safe(cb.task_options_form, 1), [cmp_task, cmp_task_opts], cmp_task_opts)
        run_btn.click(_owned(cb.start_training, 1), [task, variant, settings, config, root, task_opts], train_job)
        stop_btn.click(_owned(cb.stop_job, 1), train_job, train_status)

        def poll_train(job_id, seen):
            version = cb.job_version(job_id)
            if version == seen:
                return (gr.skip(),) * 6 + (seen,)
            return (cb.job_status(job_id), *cb.live_figures(job_id), cb.live_metric(job_id), version)

        timer.tick(poll_train, [train_job, train_seen],
                   [train_status, loss_plot, grad_plot, spec_plot, alloc_plot, metric_plot, train_seen],
                   show_progress="hidden")

        cmp_btn.click(_owned(cb.start_comparison, 1),
                      [cmp_task, cmp_variants, cmp_seeds, cmp_steps, cmp_lr, root, cmp_task_opts],
                      cmp_job)
        cmp_stop.click(_owned(lambda job_id, owner=None: (cb.jobs.stop(job_id, owner), cb.comparison_status(job_id))[1],
                              1), cmp_job, cmp_status)

        def poll_compare(job_id, seen, module):
            version = cb.job_version(job_id)
            if version == seen:
                return (gr.skip(),) * 7 + (seen,)
            job = cb.jobs.get(job_id)
            modules = cb.modules_of(job.runs) if job else []
            module = module if module in modules else (modules[0] if modules else None)
            return (cb.comparison_status(job_id), gr.update(choices=modules, value=module),
                    *cb.comparison_view(job_id, module), version)

        timer.tick(poll_compare, [cmp_job, cmp_seen, cmp_module],
                   [cmp_status, cmp_module, cmp_table, cmp_loss, cmp_spectra, cmp_alloc, cmp_freq, cmp_seen],
                   show_progress="hidden")
        cmp_module.input(lambda j, m: cb.comparison_view(j, m), [cmp_job, cmp_module],
                          [cmp_table, cmp_loss, cmp_spectra, cmp_alloc, cmp_freq])

        # the run pickers list what is on disk: on page load, on opening a tab, on Refresh and when a job ends
        def refresh_choices(root_dir):
            choices = cb.run_options(root_dir)
            return (gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices))

        pickers = [insp_run, land_run, runs_pick]
        for trigger in (demo.load, insp_refresh.click, land_refresh.click, insp_tab.select, land_tab.select,
                        runs_tab.select):
            trigger(refresh_choices, root, pickers, show_progress="hidden")

        def refresh_on_job_end(root_dir, seen, *job_ids):
            ended = cb.jobs_finished(job_ids)
            if ended == seen:
                return (gr.skip(),) * 3 + (seen,)
            return (*refresh_choices(root_dir), ended)

        ended_seen = gr.State(0)
        timer.tick(refresh_on_job_end, [root, ended_seen, demo_job, train_job, cmp_job], pickers + [ended_seen],
                   show_progress="hidden")

        def on_pick_run(root_dir, run_id):
            lo, hi, modules = cb.run_steps(root_dir, run_id)
            module = modules[0] if modules else None
            kind = cb.frequency_basis_of(root_dir, run_id)
            cadence = cb.snapshot_cadence(root_dir, run_id)  # each slider stop is a snapshot
            return (gr.update(minimum=lo, maximum=hi, value=hi, step=cadence),
                    gr.update(choices=modules, value=module), kind,
                    *cb.inspect_view(root_dir, run_id, hi, module, kind))

        insp_outputs = [insp_head, insp_spectra, insp_freq, insp_erank, insp_sim, insp_grad, insp_alloc, insp_views,
                        insp_traj, insp_loss, insp_metric]
        insp_run.change(_safe(on_pick_run, 14), [root, insp_run],
                        [insp_step, insp_module, insp_kind] + insp_outputs)
        # user changes only: the step's number box fires input at each keystroke (release only on blur), the slider
        # while dragged; always_last draws the latest value once the previous drawing is done
        for trigger in (insp_step.input, insp_module.input, insp_kind.input):
            trigger(_safe(cb.inspect_view, 11), [root, insp_run, insp_step, insp_module, insp_kind], insp_outputs,
                    trigger_mode="always_last")

        def landscape_handler(root_dir, run_id, mode, dims, n, span, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
            return cb.compute_landscape(root_dir, run_id, mode, dims, n, span,
                                        progress=lambda f: progress(f, desc="evaluating the loss grid"))

        land_btn.click(_safe(landscape_handler, 2), [root, land_run, land_mode, land_dims, land_steps, land_span],
                       [land_plot, land_md])

        def refresh_runs(root_dir, query):
            choices = cb.run_options(root_dir)
            return cb.runs_table(root_dir, query), gr.update(choices=choices)

        runs_refresh.click(_safe(refresh_runs, 2), [root, runs_query], [runs_df, runs_pick])
        runs_query.submit(_safe(cb.runs_table, 1), [root, runs_query], runs_df)
        dl_btn.click(_safe(cb.download_files, 1), [root, runs_pick], runs_files)

        def delete(root_dir, run_id):
            msg = cb.delete_run(root_dir, run_id)
            choices = cb.run_options(root_dir)
            return msg, cb.runs_table(root_dir), gr.update(choices=choices, value=None)

        del_btn.click(_safe(delete, 3), [root, runs_pick], [runs_msg, runs_df, runs_pick])
    demo.queue(default_concurrency_limit=4)
    return demo


#: the page has no upload input: Gradio's upload route refuses anything larger, so no web page the user opens can
#: fill the disk through it (issue 16)
MAX_UPLOAD = "1mb"


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
    ``strict_cors``), and downloads served from the temporary folder they are built in (``download_files``)."""
    options = {"max_file_size": MAX_UPLOAD, "enable_monitoring": False, "strict_cors": True,
               "app_kwargs": {"middleware": [Middleware(SameOriginOnly)]}, **kwargs}
    return demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, theme=THEME, css=CSS,
                       footer_links=[], **options)


def serve(args: argparse.Namespace) -> None:
    """Build and launch from parsed :func:`~workbench.dashboard.arguments.add_arguments` options."""
    if args.data_dir:
        os.environ["WORKBENCH_DATA_DIR"] = args.data_dir
    launch(build_app(args.runs), args.host, args.port)


def main(argv: list[str] | None = None) -> None:
    serve(add_arguments(argparse.ArgumentParser(description="LoRA Workbench dashboard")).parse_args(argv))


if __name__ == "__main__":
    main()
