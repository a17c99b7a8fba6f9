"""``inspect_panel(run)``: the Inspect tab over one run in a cell: a step slider, a module dropdown and a view selector.

The run is a :class:`~workbench.runs.Run` (live from a :class:`~workbench.widgets.train.TrainPanel`, or loaded with
``RunStore.load``), a panel holding one, or a run id with ``root=`` (its store). While the run trains,
:meth:`InspectPanel.refresh` picks up the new steps. Each view is one builder of :mod:`workbench.figures`, shown
with its caption; time-series views mark the selected step.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from .. import figures
from ..errors import ConfigError
from ..runs import RunStore
from .base import Panel, live_figure, show_figure

__all__ = ["InspectPanel", "inspect_panel", "VIEWS"]

#: label -> (figures builder, takes a module, takes a step); time series (no step argument) mark the step instead
VIEWS: dict[str, tuple[str, bool, bool]] = {
    "spectrum of ΔW": ("spectra", True, True),
    "frequency map": ("frequency_map", True, True),
    "variant's own views": ("variant_views", True, True),
    "location trajectories": ("location_trajectories", True, False),
    "loss": ("loss_curves", False, False),
    "validation metric": ("validation_metric", False, False),
    "gradient norms": ("gradient_norms", False, False),
    "effective rank": ("effective_rank_over_time", False, False),
    "subspace similarity": ("subspace_similarity", False, False),
    "allocation": ("allocation_heatmap", False, False),
    "spectra over time": ("spectra_over_time", True, False),
}


def _run_of(run, root: str | None):
    if isinstance(run, str):
        if root is None:
            raise ConfigError(f"inspect_panel: run={run!r} is a run id; give its store as root=")
        return RunStore(root).load(run)
    if hasattr(run, "metrics") and hasattr(run, "snapshot_steps"):
        return run
    inner = getattr(run, "run", None)  # a TrainPanel (or anything holding a run)
    if inner is None:
        raise ConfigError(f"inspect_panel: {type(run).__name__} holds no run yet; press Run first, or pass a Run")
    return inner


class InspectPanel(Panel):
    """See the module docstring. ``step`` (a SelectionSlider over the recorded steps), ``module``, ``view`` and
    ``figure`` are the widgets; ``caption`` says what the view shows and what to look for."""

    def __init__(self, run, root: str | None = None, view: str = "spectrum of ΔW"):
        super().__init__()
        if view not in VIEWS:
            raise ConfigError(f"inspect_panel: view={view!r} is invalid; choose one of "
                              + ", ".join(map(repr, VIEWS)))
        self.source = run
        self._hold = False
        self.run = _run_of(run, root)
        self.view = w.Dropdown(options=list(VIEWS), value=view, description="view")
        self.module = w.Dropdown(options=[], description="module")
        self.step = w.SelectionSlider(options=[0], value=0, description="step", continuous_update=False)
        self.figure = live_figure(420)
        self.caption = w.HTML("")
        self.refresh_button = w.Button(description="Refresh", icon="refresh",
                                       tooltip="pick up the steps a live run has recorded since")
        self.refresh_button.on_click(lambda _: self.guarded(self.refresh))
        for box in (self.view, self.module, self.step):
            box.observe(lambda _: self.guarded(self.draw), names="value")
        self.children = [w.HTML(f"<h3>Inspect {self.run.variant} on {self.run.task} · <code>{self.run.id}</code></h3>"),
                         w.HBox([self.view, self.module, self.refresh_button]), self.step, self.error,
                         self.figure, self.caption]
        self.guarded(self.refresh)

    def steps(self) -> list[int]:
        """The steps with a snapshot of ΔW's spectrum (else with any metric row), in order."""
        steps = self.run.snapshot_steps("spectra", "singular_values")
        if not steps:
            steps = sorted({int(s) for s in self.run.metrics.step}) if len(self.run.metrics) else [0]
        return sorted(set(int(s) for s in steps))

    def refresh(self) -> None:
        """Re-read the run's steps and modules (a live run keeps adding them) and redraw, keeping the selection
        where it still exists (a slider that was at the last step follows the run)."""
        if isinstance(self.source, Panel) and getattr(self.source, "run", None) is not None:
            self.run = self.source.run
        self._hold = True  # no redraw per widget change while several are set
        try:
            steps = self.steps()
            at_end = self.step.value == self.step.options[-1]
            self.step.options = steps
            self.step.value = steps[-1] if at_end or self.step.value not in steps else self.step.value
            modules = self.run.snapshot_modules("spectra", "singular_values") or list(
                dict.fromkeys(self.run.metrics.module)) or [""]
            keep = self.module.value if self.module.value in modules else modules[0]
            self.module.options = modules
            self.module.value = keep
        finally:
            self._hold = False
        self.draw()

    def draw(self) -> None:
        """Show the chosen view of the chosen module at the chosen step."""
        if self._hold:
            return
        builder, with_module, with_step = VIEWS[self.view.value]
        fn = getattr(figures, builder)
        kwargs: dict[str, Any] = {}
        module = self.module.value or None
        if with_module:
            kwargs["module"] = module
        if with_step:
            kwargs["step"] = int(self.step.value)
        if builder == "frequency_map":
            kwargs["kind"] = figures.frequency_basis(self.run)
        fig = fn(self.run, **kwargs)
        if not with_step:
            figures.mark_step(fig, int(self.step.value))
        show_figure(self.figure, fig, height=420)
        self.caption.value = f"<small>{figures.caption(builder)}</small>"
        self.redraws += 1


def inspect_panel(run, root: str | None = None, view: str = "spectrum of ΔW") -> InspectPanel:
    """Inspect a run in a cell: ``inspect_panel(run)``, ``inspect_panel(panel)`` (a TrainPanel's run) or
    ``inspect_panel("<run id>", root="runs")``. ``view`` is one of :data:`VIEWS`."""
    return InspectPanel(run, root=root, view=view)
