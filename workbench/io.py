"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every file the project writes for keeps — run metadata, metrics, snapshots, adapters, cached task weights — goes
through :func:`atomic_write`: the content is written to a temporary file in the same folder (so the final rename
stays on one file system) and moved over the target with :func:`os.replace`, which is atomic on POSIX and Windows.
If writing fails, the temporary file is removed and the old file is left as it was.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_save_safetensors"]


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], Any]) -> Path:
    """Call ``write_fn(tmp)`` with a temporary path next to ``path``, then rename it onto ``path``.

    ``write_fn`` receives the temporary file's name as a string (it may reopen or replace the file, as
    ``safetensors.torch.save_file`` does). On any exception, ``KeyboardInterrupt`` included, the temporary file is
    deleted and the exception re-raised; ``path`` keeps its old content.
    """
    path = Path(path)
    tmp = _new_temp_file(path)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _new_temp_file(path: Path) -> str:
    """Create an empty, uniquely named ``.<name>.<random>.tmp`` beside ``path``. Created with mode 0o666 so the
    umask applies, and the renamed file gets the permissions a plain ``open(path, "w")`` would give it
    (``tempfile.mkstemp`` would make every saved run and adapter private to its owner, 0o600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(tmp)
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding=encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``json.dumps(obj, indent=indent)`` to ``path`` atomically. The text is built first, so an object
    that cannot be serialised raises before anything touches the disk."""
    return atomic_write_text(path, json.dumps(obj, indent=indent))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Save ``tensors`` as a safetensors file at ``path`` atomically (detached, contiguous, on the CPU)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp))
