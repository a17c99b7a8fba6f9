"""``compare_panel(task, variants)``: the Compare tab in a cell: pick variants, seeds, steps and the learning rate,
press Run, and watch the overlaid losses and side-by-side spectra and allocations fill in while the runs train; the
summary table (mean ± sd over seeds) comes when the comparison ends.

The runs go through :func:`workbench.compare` (one ``train()`` per variant and seed, the same events and Stop as
the Train panel); the views are the dashboard's :func:`~workbench.dashboard.callbacks.comparison_view`, so the
table and the figures are the ones the dashboard shows.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from ..compare import SWEEP_FACTORS, compare
from ..dashboard import callbacks
from ..dashboard.forms import parse_number
from ..errors import ConfigError
from ..settings import resolve
from ..variant import get_variant, variant_names
from .base import Panel, live_figure, show_figure
from .train import _task, warm_up

__all__ = ["ComparePanel", "compare_panel", "parse_seeds", "parse_rate"]

LR_CHOICES = "'default' (each variant's rate on this task), 'sweep' (try a few, keep the best) or a number"


def parse_seeds(text: str) -> list[int]:
    """``"0, 1, 2"`` → ``[0, 1, 2]``; anything else is a ConfigError naming the box."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    if not parts:
        raise ConfigError("seeds='' is invalid; give at least one seed, e.g. 0 or 0, 1, 2")
    return [parse_number("seeds", p, int, 0, 2**31 - 1) for p in parts]


def parse_rate(text: str, task, variants: list[str]) -> float | str | dict[str, float]:
    """The ``lr=`` of :func:`workbench.compare` from the box: ``default`` is each variant's own resolved rate (its
    preset's, else the task's), ``sweep`` or a positive number as given."""
    raw = str(text).strip().lower()
    if raw in ("", "default"):
        return {v: resolve(task, get_variant(v)).settings.lr for v in variants}
    if raw == "sweep":
        return "sweep"
    rate = parse_number("lr", raw, float, 1e-12, 1e3)
    return rate


class ComparePanel(Panel):
    """See the module docstring. ``variants`` (a multiple selection), ``seeds``, ``steps``, ``lr``, ``run_button``,
    ``stop_button``, ``progress``, ``table`` and ``figures`` (loss, spectra, allocation) are the widgets; the
    :class:`~workbench.compare.Comparison` is ``panel.comparison`` once it ends."""

    FIGURES = ("loss", "spectra", "allocation")

    def __init__(self, task, variants, seeds: str = "0", steps: int | None = None, lr: str = "default",
                 **common: Any):
        super().__init__()
        self.task = _task(task)
        chosen = [get_variant(v).name for v in variants]  # an unknown name fails here, with suggestions
        self.common = common
        self.variants = w.SelectMultiple(options=variant_names(), value=chosen, description="variants", rows=8)
        self.seeds = w.Text(value=str(seeds), description="seeds")
        default_steps = dict(getattr(self.task, "defaults", {}) or {}).get("steps", 200)
        self.steps = w.Text(value=str(steps or default_steps), description="steps")
        self.lr = w.Text(value=str(lr), description="lr", tooltip=LR_CHOICES)
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.run_button.on_click(lambda _: self.guarded(self.start))
        self.stop_button.on_click(lambda _: self.stop())
        self.progress = w.IntProgress(value=0, min=0, max=1, description="steps")
        self.table = w.HTML("")
        self.figures = {name: live_figure(380) for name in self.FIGURES}
        self.comparison = None
        self.status.value = "Choose variants (ctrl-click for several) and press <b>Run</b>."
        self.children = [w.HTML(f"<h3>Compare on {self.task.name}</h3>"),
                         w.HBox([self.variants, w.VBox([self.seeds, self.steps, self.lr])]),
                         w.HBox([self.run_button, self.stop_button, self.progress]), self.status, self.error,
                         self.table, self.figures["loss"], self.figures["spectra"], self.figures["allocation"]]

    def start(self):
        """Check the boxes and run the comparison in the background (the Run button)."""
        chosen = list(self.variants.value)
        if not chosen:
            raise ConfigError("variants is empty; choose at least one variant")
        seeds = parse_seeds(self.seeds.value)
        steps = parse_number("steps", self.steps.value, int, 1, 10_000_000)
        lr = parse_rate(self.lr.value, self.task, chosen)
        task, common = self.task, dict(self.common)

        def work(job):
            warm_up()
            return compare(task, chosen, seeds=seeds, steps=steps, lr=lr, callback=job.on_event,
                           control=job.control, progress=False, **common)

        job = self.start_job("compare", work)
        # a sweep trains every rate on the first seed and reuses the chosen rate's run for it
        runs = len(seeds) + (len(SWEEP_FACTORS) - 1 if lr == "sweep" else 0)
        job.planned_steps = steps * len(chosen) * runs
        self.progress.max, self.progress.value = job.planned_steps, 0
        self.run_button.disabled, self.stop_button.disabled = True, False
        return job

    def redraw(self, job) -> None:
        self.status.value = f"<b>{job.status()}</b> · {len(job.runs)} run(s) started"
        self.progress.value = min(job.steps_done(), self.progress.max)
        if not job.runs:
            return
        summary, _runs, _sweep, loss, spectra, allocation, _dct = callbacks.comparison_view(job.id)
        if job.done and len(summary):
            self.table.value = summary.to_html(index=False, border=0)
        for name, fig in zip(self.FIGURES, (loss, spectra, allocation), strict=True):
            show_figure(self.figures[name], fig)

    def finished(self, job) -> None:
        super().finished(job)
        self.comparison = job.result
        if job.done and not job.error:
            self.status.value = f"<b>{job.status()}</b> · {len(job.runs)} run(s)"
        self.run_button.disabled, self.stop_button.disabled = False, True


def compare_panel(task, variants, seeds: str = "0", steps: int | None = None, lr: str = "default",
                  **common: Any) -> ComparePanel:
    """Compare variants in a cell: ``compare_panel("synthetic:lowrank", ["lora", "dora"], steps=60)``.

    ``seeds`` and ``lr`` fill their boxes (``lr``: 'default', 'sweep' or a number); ``common`` goes to every
    ``train()`` call (``probes=``, ``batch_size=``...)."""
    return ComparePanel(task, variants, seeds=seeds, steps=steps, lr=lr, **common)
