"""What every backend's run process shares: its command, its thread settings, and that it ends with
its parent."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

#: the module whose ``main`` is kdlab's command line, run by every run process
ENTRY = "kdlab.cli.main"


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Have the kernel end this (child) process when its parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def kdlab_command(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", ENTRY, *argv]


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
