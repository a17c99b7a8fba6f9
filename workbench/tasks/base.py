"""The Task protocol: what every task gives the training loop, the probes and the dashboard."""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_save_safetensors

Batch = dict[str, torch.Tensor]


class Task:
    """A frozen pretrained model, data, a loss and a metric.

    ``model()`` returns a fresh, frozen, deterministic copy each call; ``batches("train")`` is an endless
    deterministic stream for a seed, other splits are one pass; ``evaluate`` reports ``loss`` and ``metric`` on the
    validation split; ``reference_delta()`` is the true ΔW per module where it is known (synthetic tasks).

    Splits (issue 19): ``"train"`` trains, ``"val"`` selects (evaluation during training, the learning-rate sweep
    of :func:`~workbench.compare.compare`) and ``"test"`` reports: ``evaluate(model, max_batches=None,
    split="test")`` and ``batches("test")`` read data that neither training nor selection touched (synthetic: fresh
    draws from the task's seed stream; digits: a fixed half of the held-out digits; text: the dataset's test file,
    else a fixed part of the training file left out of training). ``split="val"`` stays the default, so a task
    without a test split is still a Task; :func:`has_test_split` tells them apart.
    """

    name: str = "?"
    targets: list[str] = []
    #: training defaults for this task, a partial :class:`~workbench.settings.TrainSettings` (steps, lr, batch
    #: size, schedule, cadence); ``train()`` uses them for every value the caller leaves out
    defaults: dict[str, Any] = {}
    #: the :class:`~workbench.options.Options` subclass declaring this task's keyword options (ranges, help), which
    #: ``tasks.get`` validates and the dashboard and the CLI turn into forms and flags; None for a task without any
    option_class: type | None = None
    #: modules trained in full next to the adapter (PEFT's ``modules_to_save``), e.g. a classifier head
    trainable_modules: list[str] = []
    metric: str = "loss"
    higher_is_better: bool = False

    def model(self) -> nn.Module:
        raise NotImplementedError

    def batches(self, split: str = "train", batch_size: int = 32, seed: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, max_batches: int | None = None, split: str = "val") -> dict[str, float]:
        raise NotImplementedError

    def reference_delta(self) -> dict[str, torch.Tensor] | None:
        return None

    def describe(self) -> str:
        return self.__doc__ or self.name

    def options(self) -> dict[str, Any]:
        return {}


SPLITS = ("train", "val", "test")


def has_test_split(task: Any) -> bool:
    """Whether ``task.evaluate`` takes ``split=`` (a task written before issue 19 does not): reporting on ``test``
    needs it."""
    try:
        return "split" in inspect.signature(task.evaluate).parameters
    except (TypeError, ValueError):
        return False


def frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def check_option(task: str, name: str, value: Any, low: float | None = None, high: float | None = None,
                 kind: type = int, choices=None) -> None:
    """Raise :class:`ConfigError` naming the option and its allowed range."""
    if choices is not None:
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            raise ConfigError(f"{task}: {name}={value!r} is invalid; {name} must be one of "
                              f"{', '.join(map(repr, choices))}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        return
    ok_type = isinstance(value, kind) and not isinstance(value, bool) if kind in (int, float) else isinstance(
        value, kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok_type = True
    if not ok_type or (low is not None and value < low) or (high is not None and value > high):
        what = "an integer" if kind is int else "a number" if kind is float else kind.__name__
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ConfigError(f"{task}: {name}={value!r} is invalid; {name} must be {what} in [{lo}, {hi}]")


def cache_dir() -> Path:
    """Where made-by-the-project weights are cached: $WORKBENCH_CACHE, else ~/.cache/lora-workbench."""
    root = Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "lora-workbench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def source_hash(*builders: Any) -> str:
    """A hash of the source code of ``builders`` (functions, classes): a cache built by changed code is not
    reused."""
    h = hashlib.sha256()
    for b in builders:
        try:
            text = inspect.getsource(b)
        except (OSError, TypeError):  # no source (a builtin, a frozen install): its qualified name stands in
            text = f"{getattr(b, '__module__', '?')}.{getattr(b, '__qualname__', repr(b))}"
        h.update(text.encode())
    return h.hexdigest()[:16]


def cache_key(*builders: Any, **settings: Any) -> str:
    """The key of a cached artefact: a hash of every setting that shapes it (``settings``: data split,
    normalisation, optimiser, ...), of the source of the code that builds it (``builders``, see
    :func:`source_hash`) and of the torch version, so that no change of settings, code or library reads a stale
    cache (issue 16.10: a changed split loaded a model pretrained on 349 of the new validation digits)."""
    payload = {"settings": settings, "code": source_hash(*builders), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- which folders task options may name ------------------------------------------------------------------------
_ALLOWED_ROOTS: list[Path] | None = None


def restrict_paths(roots: list[Path | str] | None) -> None:
    """Limit the folders task options (``data_dir``, a local ``model``) may name to ``roots`` and below, for this
    process; None lifts the limit (the library's default). A server facing other users calls it at start with the
    folders it was given, so a form cannot make it read any file of the machine (issue 16.11)."""
    global _ALLOWED_ROOTS
    _ALLOWED_ROOTS = None if roots is None else [Path(r).expanduser().resolve() for r in roots]


def allowed_roots() -> list[Path] | None:
    """The folders set by :func:`restrict_paths` (None: no limit)."""
    return None if _ALLOWED_ROOTS is None else list(_ALLOWED_ROOTS)


def check_path(task: str, name: str, value: str | os.PathLike | None) -> None:
    """Refuse a path option outside the folders of :func:`restrict_paths` with a :class:`ConfigError` naming the
    option and the allowed folders (never where the given path resolves to)."""
    if value is None or _ALLOWED_ROOTS is None:
        return
    try:
        resolved = Path(value).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        resolved = None
    for root in _ALLOWED_ROOTS:
        if resolved is not None and resolved.is_relative_to(root):
            return
    where = ", ".join(str(r) for r in _ALLOWED_ROOTS) or "none"
    raise ConfigError(f"{task}: {name}={str(value)!r} is invalid; {name} must be a folder inside the folders this "
                      f"server was started with ({where})")


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Cache ``tensors`` at ``path`` as safetensors, atomically (:func:`workbench.io.atomic_save_safetensors`), so
    two processes building the same cache never read half a file."""
    atomic_save_safetensors(tensors, path)


def index_stream(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs of indices into a data set of size ``n``, deterministic for the seed."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[i:i + batch_size]
