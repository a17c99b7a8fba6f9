"""Where saved generators live: ``<run store>/generators/<name>/`` (``generator.json`` + ``generator.safetensors``,
as :meth:`~workbench.generate.Generator.save` writes them), so the dashboard that serves a run store lists the
generators fitted for it and a generated run sits next to the runs its generator learned from.

The folder is not a run (it has no ``run.json``), so :meth:`~workbench.runs.RunStore.list` never shows it. Names are
checked like run ids and a folder that is a link or resolves outside the store is never opened (issue 16: a planted
symlink must not make the server read files elsewhere).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runs import RunStore, _inside
from .generator import Generator, load_generator

__all__ = ["GENERATORS", "generator_folder", "save_generator", "list_generators", "open_generator"]

GENERATORS = "generators"  # the sub-folder of a run store that holds saved generators
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,80}")


def _root(store: RunStore | str | os.PathLike) -> Path:
    return (store.root if isinstance(store, RunStore) else Path(store)) / GENERATORS


def generator_folder(store: RunStore | str | os.PathLike, name: str) -> Path:
    """The folder of generator ``name`` in ``store``; a ConfigError for a name that is not a plain folder name
    (``..``, slashes) or a folder that is a link or lies outside the store."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"generator: name={str(name)[:60]!r} is invalid; a name is letters, digits and _ . + - "
                          f"(at most 81 characters, starting with a letter or digit)")
    root = _root(store)
    folder = root / name
    if folder.is_symlink() or (folder.exists() and not _inside(folder, root)):
        raise ConfigError(f"generator {name!r} is a link or lies outside the run store; it is not opened")
    return folder


def save_generator(generator: Generator, store: RunStore | str | os.PathLike, name: str | None = None) -> Path:
    """Save ``generator`` into ``store``'s :data:`GENERATORS` folder under ``name`` (default: its id,
    ``cvae-<hash>``); returns the folder. Saving again under one name replaces that generator."""
    return generator.save(generator_folder(store, name or generator.id))


def list_generators(store: RunStore | str | os.PathLike) -> list[dict[str, Any]]:
    """One dict per saved generator of ``store`` (name, id, task, condition, trained range, checkpoints, created),
    newest first; folders without a readable ``generator.json`` and links are skipped."""
    root = _root(store)
    out = []
    for meta_file in sorted(root.glob("*/generator.json")) if root.is_dir() else []:
        folder = meta_file.parent
        if folder.is_symlink() or meta_file.is_symlink() or not _inside(folder, root) \
                or not _NAME_RE.fullmatch(folder.name):
            continue
        try:
            saved = json.loads(meta_file.read_text(encoding="utf-8"))
            meta = saved["meta"]
            lo, hi = (float(v) for v in meta["range"])
            out.append({"name": folder.name, "id": str(saved.get("id", "")), "task": str(meta["task"]),
                        "condition": str(meta["condition"]), "range": (lo, hi),
                        "checkpoints": int(meta.get("checkpoints", 0)), "created": str(meta.get("created", ""))})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda g: g["created"], reverse=True)


def open_generator(store: RunStore | str | os.PathLike, name: str, device: str = "cpu") -> Generator:
    """The generator saved as ``name`` in ``store`` (:func:`~workbench.generate.load_generator`)."""
    folder = generator_folder(store, name)
    if not (folder / "generator.json").is_file():
        raise ConfigError(f"generator {name!r} is not in {_root(store)}; choose one of the saved generators")
    return load_generator(folder, device=device)
