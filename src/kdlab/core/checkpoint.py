"""Checkpoints: written atomically (temp file, fsync, rename) and read with ``weights_only=True``.

A checkpoint is written to a hidden temp file beside it (``.NAME.XXXX.tmp``) that is renamed over
``NAME`` once complete, with the permissions the umask gives any new file. A write that fails (a full
disk) removes its temp file and leaves the previous checkpoint as it was; a process killed mid-write
leaves the temp file, which :func:`remove_stale_temps` clears when a run starts or resumes.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from kdlab.core.errors import CheckpointError, DiskFullError

#: the errno values of a write refused for want of space (a full device, an exhausted quota)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
#: the binary units size_text uses, as powers of two
UNIT_POWER = {"KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}
#: the name pattern of save_atomic's temp files
TEMP_PATTERN = ".*.pt.*.tmp"


def mismatch_reason(exc: RuntimeError) -> str:
    """The first specific line of a ``load_state_dict`` error (a missing key, a size mismatch)."""
    text = str(exc)
    return text.split("\n\t")[1] if "\n\t" in text else text.splitlines()[0]


def umask_mode() -> int:
    """The permission bits the process's umask gives a new file (``0o644`` under the usual ``022``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor inside ``obj`` (nested dicts, lists and tuples): a checkpoint's size."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def out_of_space(exc: BaseException, folder: Path, needed: int) -> bool:
    """Whether ``exc`` (raised while writing ``needed`` bytes into ``folder``) means the disk is full:
    an ``ENOSPC``/``EDQUOT`` error, or a torch writer error while less than ``needed`` is free."""
    if isinstance(exc, OSError):
        return exc.errno in NO_SPACE
    return isinstance(exc, RuntimeError) and shutil.disk_usage(folder).free < needed


def size_text(num_bytes: int) -> str:
    """``12.3 MiB``: the largest of KiB, MiB, GiB and TiB that keeps the number at least 1."""
    unit = next((u for u in ("TiB", "GiB", "MiB") if num_bytes >= 2 ** UNIT_POWER[u]), "KiB")
    return f"{num_bytes / 2 ** UNIT_POWER[unit]:.1f} {unit}"


def disk_full_message(path: Path, needed: int) -> str:
    """One line naming ``path``, the space it needs and the space free, and that the old file stays."""
    free = shutil.disk_usage(path.parent).free
    kept = f"; the previous {path.name} is kept" if path.exists() else ""
    return (f"{path}: no space left on the device (needs about {size_text(needed)}, {size_text(free)} "
            f"free){kept}; free some space and run again")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None], needed: int) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``: ``path`` holds
    either its previous or its new content, never half. ``needed`` (bytes) sizes the one-line
    :class:`DiskFullError` of a full disk; no partial file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if out_of_space(exc, path.parent, needed):
            raise DiskFullError(disk_full_message(path, needed)) from None
        raise


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save(state)`` to ``path`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda handle: torch.save(state, handle), tensor_bytes(state))


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` to ``path`` atomically (see :func:`write_atomic`)."""
    data = text.encode()
    write_atomic(path, lambda handle: handle.write(data), len(data))


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files a killed :func:`save_atomic` left in ``folder``; the paths removed."""
    stale = sorted(Path(folder).glob(TEMP_PATTERN)) if Path(folder).is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def load(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint file's dict; with ``mmap`` its tensors are memory-mapped, read only when used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # any unreadable file is one user-facing error
        raise CheckpointError(f"{path}: not a readable kdlab checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a kdlab checkpoint (expected a dict)")
    return state


def read_config(path: str | Path) -> dict[str, Any] | None:
    """The run config a checkpoint records (None for a plain state_dict file), without reading its
    tensors."""
    config = load(path, mmap=True).get("config")
    return config if isinstance(config, dict) else None


#: what a resumable checkpoint holds: each entry's name and the types it may have
RESUME_ENTRIES: dict[str, tuple[type, ...]] = {
    "model": (dict,), "optimizer": (dict,), "scheduler": (dict,), "scaler": (dict,), "rng": (dict,),
    "step": (int,), "stage": (int,), "best": (dict, type(None)), "train_time": (int, float),
    "images_seen": (int,), "callbacks": (dict,),
}
#: the global RNG states a checkpoint's ``rng`` entry holds, and their types
RNG_ENTRIES: dict[str, tuple[type, ...]] = {"torch": (torch.Tensor,), "numpy": (list,), "python": (list,)}


def _wrong_entry(state: dict[str, Any], entries: dict[str, tuple[type, ...]], prefix: str) -> str | None:
    for key, types in entries.items():
        if key not in state:
            return f"its '{prefix}{key}' entry is missing"
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            return f"its '{prefix}{key}' entry is a {type(value).__name__}, expected {expected}"
    return None


def check_resumable(state: dict[str, Any], path: str | Path) -> None:
    """Refuse, in one line naming ``path``, a checkpoint that lacks an entry a resume reads or holds one
    of the wrong type (a hand-edited or foreign file), before any of it is used."""
    problem = _wrong_entry(state, RESUME_ENTRIES, "") or _wrong_entry(state["rng"], RNG_ENTRIES, "rng.")
    if problem is None and state["step"] < 0:
        problem = f"its step is {state['step']}"
    if problem is not None:
        raise CheckpointError(f"{path}: not a resumable kdlab checkpoint ({problem})")


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
