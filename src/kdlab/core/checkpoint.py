"""Checkpoints: written atomically (temp file, fsync, rename) and read with ``weights_only=True``."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.core.errors import CheckpointError


def mismatch_reason(exc: RuntimeError) -> str:
    """The first specific line of a ``load_state_dict`` error (a missing key, a size mismatch)."""
    text = str(exc)
    return text.split("\n\t")[1] if "\n\t" in text else text.splitlines()[0]


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` so that ``path`` holds either the previous or the new checkpoint, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # any unreadable file is one user-facing error
        raise CheckpointError(f"{path}: not a readable kdlab checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a kdlab checkpoint (expected a dict)")
    return state


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU and CUDA, numpy, python) in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def student_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's own state_dict from a distiller's state_dict (keys under ``student.``)."""
    prefix = "student."
    return {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
