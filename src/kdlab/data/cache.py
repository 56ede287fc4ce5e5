"""The on-disk cache for decoded datasets: ``$KDLAB_CACHE`` or ``~/.cache/kdlab``.

Entries are keyed by a hash of what identifies the source (absolute path, size, mtime, decode options)
and written atomically (a temporary file in the same folder, then a rename), so a crash or a concurrent
writer never leaves a truncated entry behind.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    return Path(os.environ.get("KDLAB_CACHE") or "~/.cache/kdlab").expanduser()


def cache_key(*parts: object) -> str:
    """A short stable hash of ``parts`` (their ``repr``)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def load_entry(path: Path) -> dict[str, Any] | None:
    """The cached dict at ``path``, or None when missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None


def save_entry(entry: dict[str, Any], path: Path) -> None:
    """Write ``entry`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(entry, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
