"""Jupyter widgets over the same library code as the dashboard (issue 23).

* :func:`train_panel` – the Train tab in a cell: a form generated from the declarations, Run/Stop, live figures;
* :func:`inspect_panel` – step slider, module dropdown and view selector over a saved or live run;
* :func:`compare_panel` – train several variants and compare them, live;
* :func:`landscape_panel` – the loss landscape around a trained adapter, computed in the background;
* :func:`replace_output` – what a notebook's own slider callback uses to redraw an ``ipywidgets.Output``.

Every figure comes from :mod:`workbench.figures`; the background work runs as a dashboard job
(:mod:`workbench.dashboard.jobs`) driven by ``train()``'s events and stopped through its ``TrainControl``.
"""

from .base import replace_output
from .compare import ComparePanel, compare_panel
from .inspect import InspectPanel, inspect_panel
from .landscape import LandscapePanel, landscape_panel
from .train import TrainPanel, train_panel

__all__ = ["train_panel", "inspect_panel", "compare_panel", "landscape_panel", "TrainPanel", "InspectPanel",
           "ComparePanel", "LandscapePanel", "replace_output"]
