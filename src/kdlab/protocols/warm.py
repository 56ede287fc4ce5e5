"""Warm workers: runs forked from a process that has already imported kdlab, torch and torchvision.

A ``kdlab train`` subprocess spends several seconds starting Python and importing torch, torchvision
(which pulls in ``torch._dynamo``) and kdlab before its first step; in a study of short runs that is
most of each run. :func:`warm_launcher` starts each run instead as a child of a *fork server*
(``multiprocessing``'s ``forkserver`` context, started once per driver process, with
:data:`PRELOAD` imported in it): the child is a fresh process, so runs stay isolated from each other
(global torch state, memory, a crash), but it starts with every module already imported.

Each child: ends when the fork server does (``PR_SET_PDEATHSIG``; the fork server ends with the
driver), takes the run's environment (thread counts, ``CUDA_VISIBLE_DEVICES``) and working directory,
sets torch's thread count to ``OMP_NUM_THREADS`` (the fork server imports torch but never computes, so
no thread pool or CUDA context exists before the fork), appends its output to the run's log (file
descriptors 1 and 2, so C-level output too) and runs kdlab's command line, exiting with its code. A
bug's traceback lands in the log with exit code 1; SIGINT stops the run at a clean point (code 130);
a killed child's exit code is minus the signal, which the runner treats as a failed try.

What stays warm is the imported code; each run still reads and decodes its own data.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch

from kdlab.protocols.children import ENTRY, die_with_parent

#: what the fork server imports once: the command line, the modules a run needs and scikit-learn's
#: dataset loaders (the digits data; 1.8 s to import)
PRELOAD = ("torch", "torchvision", ENTRY, "kdlab.run", "kdlab.teacher_cache", "kdlab.evaluate",
           "sklearn.datasets")

_CONTEXT: ForkServerContext | None = None


def fork_server() -> ForkServerContext:
    """This process's fork-server context (its server starts, and imports :data:`PRELOAD`, at the first
    run)."""
    global _CONTEXT
    if _CONTEXT is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(PRELOAD))
        _CONTEXT = context
    return _CONTEXT


def run_child(argv: Sequence[str], log: str, env: dict[str, str], cwd: str) -> None:  # pragma: no cover
    """The body of a warm child (runs in the forked process; see the module docstring)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    threads = env.get("OMP_NUM_THREADS")
    if threads is not None:
        torch.set_num_threads(int(threads))
    sys.exit(importlib.import_module(ENTRY).main(list(argv)))


class WarmProcess:
    """A warm child with the interface of ``subprocess.Popen`` that the executors use."""

    def __init__(self, process: BaseProcess) -> None:
        self.process = process
        self.pid = int(process.pid or 0)

    def poll(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        code = self.process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(f"kdlab run {self.pid}", timeout or 0.0)
        return code

    def kill(self) -> None:
        self.process.kill()


def warm_launcher(command: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> WarmProcess:
    """Start ``command`` (``python -m kdlab.cli.main ARGV``, as the cold launcher gets it) as a warm
    child; only its kdlab arguments are used."""
    argv = command[command.index(ENTRY) + 1:]
    args = (argv, str(log), dict(env), str(cwd or Path.cwd()))
    process = fork_server().Process(target=run_child, args=args, name="kdlab-run")
    process.start()
    return WarmProcess(process)
