"""``landscape_panel(run)``: the loss around a trained adapter (Li et al. 2018's filter-normalised directions, with
Keskar et al.'s ε-sharpness), computed in the background with a progress bar and Stop between any two grid points.

The numbers are checked by the dashboard's own :func:`~workbench.dashboard.callbacks.landscape_numbers` (a message
naming the box and its range), the grid by :func:`workbench.probes.landscape.landscape`, the figure by
:func:`workbench.figures.landscape`.
"""

from __future__ import annotations

import ipywidgets as w

from .. import figures
from ..dashboard import callbacks
from ..errors import ConfigError
from ..probes.landscape import MODES
from .base import Panel, live_figure, show_figure
from .inspect import _run_of

__all__ = ["LandscapePanel", "landscape_panel"]


class LandscapePanel(Panel):
    """See the module docstring. ``mode``, ``dims``, ``points``, ``span``, ``compute_button``, ``stop_button``,
    ``progress`` and ``figure`` are the widgets; ``result`` is the last landscape's dict."""

    def __init__(self, run, task=None, root: str | None = None, dims: int = 1, points: int = 11, span: float = 1.0):
        super().__init__()
        self.source = run
        self.run = _run_of(run, root)
        self.task = task
        self.mode = w.Dropdown(options=list(MODES), value="adapter", description="directions in")
        self.dims = w.Dropdown(options=[1, 2], value=dims, description="dimensions")
        self.points = w.Text(value=str(points), description="grid points")
        self.span = w.Text(value=str(span), description="span")
        self.compute_button = w.Button(description="Compute", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.compute_button.on_click(lambda _: self.guarded(self.start))
        self.stop_button.on_click(lambda _: self.stop())
        self.progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, description="grid")
        self.figure = live_figure(420)
        self.result: dict | None = None
        self.status.value = "Choose the directions and the grid, then press <b>Compute</b>."
        self.children = [w.HTML(f"<h3>Loss landscape of {self.run.variant} on {self.run.task}</h3>"),
                         w.HBox([self.mode, self.dims]), w.HBox([self.points, self.span]),
                         w.HBox([self.compute_button, self.stop_button, self.progress]), self.status, self.error,
                         self.figure, w.HTML(f"<small>{figures.caption('landscape')}</small>")]

    def start(self):
        """Check the boxes and compute the landscape in the background (the Compute button)."""
        dims, steps, span = callbacks.landscape_numbers(self.dims.value, self.points.value, self.span.value)
        mode = callbacks.landscape_mode(self.mode.value)
        if isinstance(self.source, Panel) and getattr(self.source, "run", None) is not None:
            self.run = self.source.run
        run, given = self.run, self.task
        if run.status == "running":
            raise ConfigError(f"run {run.id} is still training; compute its landscape once it has ended")

        def load():
            task = given if given is not None else callbacks.task_of(run)
            return (run.adaptation if run.adaptation is not None else run.restore(task)), task

        def work(job):
            return callbacks.landscape_work(job, load, mode, dims, steps, span)

        job = self.start_job("landscape", work)
        self.progress.value = 0.0
        self.compute_button.disabled, self.stop_button.disabled = True, False
        return job

    def redraw(self, job) -> None:
        self.progress.value = float(job.progress or 0.0)
        if not (job.done and isinstance(job.result, dict)):
            done = f" · {100 * job.progress:.0f}%" if job.progress else ""
            self.status.value = f"<b>{job.status()}</b> · {job.phase or 'starting'}{done}"
            return
        self.result = job.result
        self.progress.value = 1.0
        show_figure(self.figure, figures.landscape(job.result), height=420)
        self.status.value = f"centre loss {job.result['center_loss']:.4g} · {figures.sharpness_text(job.result)}"

    def finished(self, job) -> None:
        super().finished(job)
        if job.stopped:
            self.status.value = f"<b>stopped</b> at {100 * (job.progress or 0):.0f}% of the grid"
        self.compute_button.disabled, self.stop_button.disabled = False, True


def landscape_panel(run, task=None, root: str | None = None, dims: int = 1, points: int = 11,
                    span: float = 1.0) -> LandscapePanel:
    """The landscape of a finished run in a cell: ``landscape_panel(run)`` (``task``: the run's task, when it is at
    hand; otherwise rebuilt from the run's record)."""
    return LandscapePanel(run, task=task, root=root, dims=dims, points=points, span=span)
