"""``train_panel(task, variant, **config)``: the dashboard's Train tab in a notebook cell.

A form generated from the declarations (the training settings and the variant's Config, filled as ``train()`` would
resolve them: defaults < task defaults < the variant's preset for the task < what the call passed), Run and Stop, a
progress bar, and the loss, gradient-norm, spectrum and allocation figures redrawn *while* the run trains (the
dashboard's :func:`~workbench.dashboard.callbacks.live_figures`, throttled by :class:`~workbench.widgets.base.Panel`).
The run is ``panel.run`` (live while it trains, final once it ends).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ipywidgets as w
import plotly.graph_objects as go
import torch

from .. import figures
from ..adapt import match_targets
from ..dashboard import callbacks
from ..dashboard.callbacks import COMMON_SETTINGS
from ..errors import ConfigError
from ..recipes import get_recipe
from ..runs import Run
from ..settings import TrainSettings, resolve, split_overrides
from ..train import train
from ..variant import get_variant
from .base import Panel, live_figure, markdown_html, row, show_figure
from .form import OptionsForm

__all__ = ["TrainPanel", "train_panel", "warm_up"]

_WARM = threading.Event()


def warm_up() -> None:
    """What a process's first run and first live figure wait for, done once per process in a background thread
    when a panel is built: the first ``torch.optim.AdamW`` imports ``torch._dynamo`` (seconds), and plotly's first
    figures of a kind build their validators (about a second: drawn here once, on a two-step stand-in run)."""
    if _WARM.is_set():
        return
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    stand_in = Run(id="warm-up", config={"variant": "lora", "task": "warm-up", "steps": 2})
    for step in (0, 1):
        stand_in.log(step, "train", "", "loss", 1.0 / (step + 1))
        stand_in.log(step, "gradients", "m", "grad_norm", 1.0 / (step + 1))
    show_figure(go.FigureWidget(), callbacks.loss_chart(stand_in))
    show_figure(go.FigureWidget(), figures.gradient_norms(stand_in))
    _WARM.set()


def _task(task) -> Any:
    return callbacks.get_task(task) if isinstance(task, str) else task


class TrainPanel(Panel):
    """See the module docstring. ``settings_form`` and ``config_form`` are :class:`OptionsForm`; ``run_button``,
    ``stop_button``, ``progress`` and ``figures`` (loss, gradients, spectrum, allocation) are the widgets."""

    FIGURES = ("loss", "gradients", "spectrum", "allocation")

    def __init__(self, task, variant: str, probes: str | None = "default", **overrides: Any):
        super().__init__()
        self.task = _task(task)
        self.variant = get_variant(variant)
        self.probes = probes
        s, c = split_overrides(self.variant, overrides)
        self.explicit_settings, self.explicit_config = s, c
        shown = resolve(self.task, self.variant, s, c)  # a bad keyword fails here, where the call is
        self.settings_form = OptionsForm(TrainSettings, shown.settings.to_dict(), shown.sources["settings"],
                                         COMMON_SETTINGS)
        self.config_form = OptionsForm(self.variant.Config, shown.config, shown.sources["config"],
                                       owner=self.variant.name)
        forms = w.Accordion([self.settings_form, self.config_form], selected_index=1)
        forms.set_title(0, "training settings")
        forms.set_title(1, f"{self.variant.name} config")
        self.note = w.HTML(markdown_html(callbacks.preset_note(self.variant.name, self.task.name, shown.preset)))
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.run_button.on_click(lambda _: self.guarded(self.start))
        self.stop_button.on_click(lambda _: self.stop())
        self.progress = w.IntProgress(value=0, min=0, max=shown.settings.steps, description="steps")
        self.module = w.Dropdown(options=list(match_targets(self.task.model(), self.task.targets)),
                                 description="module")
        self.module.observe(lambda _: self.job is not None and self._draw(self.job), names="value")
        self.figures = {name: live_figure() for name in self.FIGURES}
        self.status.value = "Press <b>Run</b> to train; the figures update while it trains."
        self.children = [w.HTML(f"<h3>{self.variant.name} on {self.task.name}</h3>"), forms, self.note,
                         w.HBox([self.run_button, self.stop_button, self.progress]), self.status, self.error,
                         self.module, row(self.figures["loss"], self.figures["gradients"]),
                         row(self.figures["spectrum"], self.figures["allocation"])]
        self.pressed: float | None = None  # time.perf_counter() of the last press of Run
        threading.Thread(target=warm_up, name="workbench-warm-up", daemon=True).start()

    # -- what Run does -----------------------------------------------------------------------------------------
    def values(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(settings, config) to pass to ``train()``: what the call gave plus what was edited in the forms, checked
        the way ``train()`` will check them (the settings' ranges, the config against every target layer's shape),
        so a bad value is refused here with a ConfigError and nothing starts."""
        settings = {**self.explicit_settings, **self.settings_form.changed()}
        config = {**self.explicit_config, **self.config_form.changed()}
        final = resolve(self.task, self.variant, settings, config)
        model = self.task.model()
        shapes = {n: (m.out_features, m.in_features) for n in match_targets(model, self.task.targets)
                  for m in [model.get_submodule(n)]}
        self.variant.Config.from_kwargs(final.config, self.variant.name).validate(shapes)
        get_recipe(final.settings.recipe or self.variant.default_recipe)
        return settings, config

    def start(self):
        """Validate the forms and train in the background (the Run button)."""
        self.pressed = time.perf_counter()
        settings, config = self.values()
        steps = resolve(self.task, self.variant, settings, config).settings.steps
        task, name, probes = self.task, self.variant.name, self.probes

        def work(job):
            return train(task, name, settings=settings, config=config, probes=probes, callback=job.on_event,
                         control=job.control, progress=False)

        job = self.start_job("train", work)
        self.progress.max, self.progress.value = steps, 0
        self.run_button.disabled, self.stop_button.disabled = True, False
        return job

    @property
    def run(self):
        """The run (live while it trains; None before the first press of Run)."""
        return None if self.job is None else self.job.run

    # -- drawing ---------------------------------------------------------------------------------------------------
    def redraw(self, job) -> None:
        self.status.value = markdown_html(callbacks.job_status(job.id))
        run = job.run
        if run is None:
            return
        self.progress.value = min(job.steps_done(), self.progress.max)
        # the loss first, on its own: it is the live point the user waits for; the dashboard's other three
        # figures (callbacks.live_figures) follow
        show_figure(self.figures["loss"], callbacks.loss_chart(run))
        if self.first_draw is None and len(self.figures["loss"].data):
            self.first_draw = time.perf_counter()
        show_figure(self.figures["gradients"], figures.gradient_norms(run))
        show_figure(self.figures["spectrum"], figures.spectra(run, module=self.module.value))
        show_figure(self.figures["allocation"], figures.allocation_heatmap(run))

    def finished(self, job) -> None:
        super().finished(job)
        self.run_button.disabled, self.stop_button.disabled = False, True

    @property
    def first_point_seconds(self) -> float | None:
        """Seconds from the last press of Run to the first figure drawn with data (the live view's latency)."""
        if self.pressed is None or self.first_draw is None:
            return None
        return self.first_draw - self.pressed


def train_panel(task, variant: str, **config: Any) -> TrainPanel:
    """The Train tab in a cell: ``train_panel("synthetic:lowrank", "lora", r=4, steps=100)``.

    ``task`` is a Task or a task name; ``config`` holds training settings and the variant's hyper-parameters by
    name, as ``train()`` takes them (they fill the form as explicit values). Raises ConfigError for an unknown
    name; a bad value typed into the form later is shown in the panel instead.
    """
    if not variant:
        raise ConfigError("train_panel: choose a variant")
    return TrainPanel(task, variant, **config)
