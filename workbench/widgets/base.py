"""What every panel shares: live figures, a status line, an error line, and a background job watched by a throttled
refresher.

A panel's work (a training, a comparison, a landscape) runs as a dashboard job (:func:`workbench.dashboard.jobs.start`:
its own thread, Stop through the run's ``TrainControl``, an exception kept on the job instead of raised). A second,
light thread watches the job's ``version`` (bumped by every ``train()`` event) and redraws the panel at most once every
``interval`` seconds, so drawing never slows the training loop and a fast run does not flood the browser with
messages. Figures are built by :mod:`workbench.figures` only and copied into plotly ``FigureWidget``s in place.
"""

from __future__ import annotations

import html
import re
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import plotly.graph_objects as go

from ..dashboard import jobs
from ..errors import ConfigError

__all__ = ["Panel", "live_figure", "show_figure", "replace_output", "markdown_html", "row", "REFRESH_SECONDS"]

#: at most one redraw of a panel's figures per this many seconds while its job runs
REFRESH_SECONDS = 0.25
FIGURE_WIDTH = 600  # two side by side fit a JupyterLab notebook on a 1400-px screen, more wrap


def live_figure(height: int = 340) -> go.FigureWidget:
    """An empty plotly ``FigureWidget``: the object the panel updates in place as the run goes."""
    fw = go.FigureWidget()
    fw.update_layout(height=height, width=FIGURE_WIDTH)
    return fw


def show_figure(fw: go.FigureWidget, fig: go.Figure, height: int | None = None) -> None:
    """Make ``fw`` show ``fig`` (built by :mod:`workbench.figures`): its traces and its whole layout replace the old
    ones, so a note of an empty figure does not stay on the next one."""
    fw.data = ()
    fw.layout = fig.layout
    fw.update_layout(width=FIGURE_WIDTH, **({"height": height} if height else {}))
    if fig.data:
        fw.add_traces(list(fig.data))


def replace_output(out: w.Output, *items: Any) -> None:
    """Show ``items`` (figures, tables, text: anything IPython can display) in ``out``, replacing what it held.

    The items go in through the widget's state (``outputs``, then ``append_display_data``), not by capturing output
    in ``with out:``: when a notebook runs under nbclient (nbmake, ``nbconvert --execute``), captured output makes
    nbclient write widget updates to the kernel on the channel it is reading the cell's reply from, and the cell
    can stall until its timeout (jupyter/nbclient#312; notebook 08 lost 300 s of nbmake's time to it). Strings are
    shown as plain text."""
    out.outputs = ()
    for item in items:
        if isinstance(item, str):
            out.append_stdout(item if item.endswith("\n") else item + "\n")
        else:
            out.append_display_data(item)


def row(*children: w.Widget) -> w.HBox:
    """Widgets side by side, wrapping onto the next line where the notebook is too narrow."""
    return w.HBox(list(children), layout=w.Layout(flex_flow="row wrap"))


def markdown_html(text: str) -> str:
    """The dashboard's one-line markdown (``**bold**``, ```code```) as HTML for an ipywidgets ``HTML``."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"\*(.+?)\*", r"<i>\1</i>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


class Panel(w.VBox):
    """Base of the panels: ``status`` and ``error`` lines, one background job at a time, :meth:`wait`.

    Subclasses implement :meth:`redraw` (called from the refresher thread, throttled, and once when the job ends).
    """

    interval: float = REFRESH_SECONDS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.status = w.HTML("")
        self.error = w.HTML("")
        self.job: jobs.Job | None = None
        self._watcher: threading.Thread | None = None
        self.redraws = 0                 # how many times the figures were redrawn (tests, and the throttle's proof)
        self.first_draw: float | None = None  # time.perf_counter() of the first redraw that showed data

    # -- errors ---------------------------------------------------------------------------------------------------
    def show_error(self, exc: BaseException | str | None) -> None:
        """Show ``exc`` in the panel's error line (empty: clear it). A ConfigError names the field and its range."""
        if exc is None or exc == "":
            self.error.value = ""
            return
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.error.value = f"<span style='color:#b00020'>⚠ {html.escape(text, quote=False)}</span>"

    def guarded(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn``; a bad value (ConfigError, ValueError) or any other exception is shown in the panel, never
        raised into the notebook (a button's handler has nowhere to raise to)."""
        try:
            self.show_error(None)
            return fn()
        except (ConfigError, ValueError) as exc:
            self.show_error(exc)
        except Exception as exc:  # noqa: BLE001 - shown in the panel with its type
            self.show_error(exc)
            self.trace = traceback.format_exc()
        return None

    # -- the job --------------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.job is not None and not self.job.done

    def start_job(self, kind: str, work: Callable[[jobs.Job], Any]) -> jobs.Job:
        """Run ``work(job)`` in the background and watch it; one job per panel at a time."""
        if self.busy:
            raise ConfigError(f"{kind}: job {self.job.id} is still {self.job.status()}; press Stop and wait for it "
                              "to end before starting another")
        self.first_draw = None
        self.job = jobs.start(kind, work)
        self._watcher = threading.Thread(target=self._watch, args=(self.job,), name=f"{self.job.id}-view",
                                         daemon=True)
        self._watcher.start()
        return self.job

    def stop(self) -> None:
        """Ask the running job to end after its current step (the run ends ``stopped``)."""
        if self.job is not None and not self.job.done:
            self.job.request_stop()

    def wait(self, timeout: float | None = 120.0) -> Any:
        """Block until the job and its last redraw are done (tests, scripts); returns the job's result."""
        if self._watcher is not None:
            self._watcher.join(timeout)
            if self._watcher.is_alive():
                raise TimeoutError(f"job {self.job.id} still {self.job.status()} after {timeout} s")
        return None if self.job is None else self.job.result

    def _watch(self, job: jobs.Job) -> None:
        seen = -1
        while True:
            done = job.done  # read before drawing, so the last events are always drawn
            if job.version != seen:
                seen = job.version
                self._draw(job)
            if done:
                break
            time.sleep(self.interval)
        self._draw(job)
        self.finished(job)

    def _draw(self, job: jobs.Job) -> None:
        try:
            self.redraw(job)
            self.redraws += 1
        except Exception as exc:  # noqa: BLE001 - a figure that failed mid-run is redrawn on the next tick
            self.show_error(f"could not draw: {type(exc).__name__}: {exc}")

    def redraw(self, job: jobs.Job) -> None:
        """Update the panel's figures and status from ``job`` (refresher thread)."""

    def finished(self, job: jobs.Job) -> None:
        """Called once after the job's last redraw: show a failure in the error line."""
        if job.error:
            self.show_error(job.error)
