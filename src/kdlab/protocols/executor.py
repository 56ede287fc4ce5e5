"""Where a protocol's runs execute: one small interface, two backends.

A protocol hands the executor a :class:`Task` (the arguments of one ``kdlab`` command, its log file and
working directory) and gets a :class:`Handle` back, which it polls, interrupts (Ctrl-C) or kills. The
executor knows nothing of studies or domains, and a protocol knows nothing of the backend:

- ``local`` (default): each task is a ``kdlab`` subprocess on this machine, limited to a number of
  threads and, with ``devices``, pinned to the least busy GPU (``CUDA_VISIBLE_DEVICES``);
- ``ray``: each task is a Ray task with its resource request (``num_cpus``, ``num_gpus``) that runs the
  same subprocess on whichever node Ray picks (:mod:`.ray_executor`; Ray is imported only then).

What stays in the protocol (:mod:`.runner`): which runs are finished, resumes, bounded retries,
blocked students and the results files.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field

from kdlab.config.schema import Section
from kdlab.core.errors import ConfigError
from kdlab.protocols.children import die_with_parent, kdlab_command, thread_env
from kdlab.protocols.warm import warm_launcher

INTERRUPTED = 130


class ExecutorConfig(Section):
    """The study file's ``executor`` section (``kdlab study``/``kdlab dg`` flags override it)."""

    backend: Literal["local", "ray"] = "local"
    address: str | None = Field(
        None, description="ray: 'auto' or HOST:PORT of a running cluster; none: a Ray instance started here")
    num_cpus: float = Field(1.0, gt=0, description="ray: CPUs each run requests (and its thread count)")
    num_gpus: float = Field(0.0, ge=0, description="ray: GPUs each run requests")
    retries: int = Field(1, ge=0, description="how often a failed run is tried again (resuming its last.pt)")
    warm: bool = Field(True, description="start each run from a process that has kdlab and torch imported "
                                         "(a fork server; on ray, one per Ray worker); false: a fresh "
                                         "Python process per run")


@dataclass(frozen=True)
class Task:
    """One ``kdlab`` command to run: ``argv`` after ``kdlab``, its log file and working directory."""

    argv: list[str]
    log: Path
    cwd: Path = field(default_factory=Path.cwd)


class Handle(Protocol):
    """A task in flight. ``poll`` is its exit code once it has ended (None before); a run the backend
    lost (its worker died) ends with a negative code."""

    pid: int | None

    def poll(self) -> int | None: ...

    def interrupt(self) -> None: ...

    def wait(self, timeout: float) -> int | None: ...

    def kill(self) -> None: ...


class Executor(Protocol):
    """Starts tasks. ``capacity`` is how many may be in flight at once (None: as many as the backend
    admits; Ray queues them by their resource requests)."""

    capacity: int | None

    def start(self, task: Task) -> Handle: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class Process(Protocol):
    """What :class:`LocalExecutor` needs of a child process (``subprocess.Popen`` has it)."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


Launcher = Callable[[list[str], Path, dict[str, str]], Process]


def subprocess_launcher(command: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
                        ) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log``; it ends when this process dies."""
    with log.open("a") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                preexec_fn=die_with_parent if sys.platform == "linux" else None)


class LocalHandle:
    def __init__(self, process: Process, release: Callable[[], None]) -> None:
        self.process, self.release, self.pid = process, release, process.pid

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None:
            self.release()
        return code

    def interrupt(self) -> None:
        with suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.release()
        return code

    def kill(self) -> None:
        self.process.kill()


class LocalExecutor:
    """``kdlab`` subprocesses on this machine, ``workers`` at a time, ``threads`` threads each."""

    def __init__(self, workers: int, threads: int, devices: Sequence[str] | None = None,
                 launcher: Launcher = subprocess_launcher) -> None:
        self.capacity, self.threads, self.launcher = workers, threads, launcher
        self.devices = list(devices or ())
        self.busy: list[str] = []
        self.running: dict[int, Process] = {}

    def start(self, task: Task) -> Handle:
        env = {**os.environ, **thread_env(self.threads)}
        device = None
        if self.devices:
            device = env["CUDA_VISIBLE_DEVICES"] = min(self.devices, key=self.busy.count)
            self.busy.append(device)
        process = self.launcher(kdlab_command(task.argv), task.log, env)
        self.running[id(process)] = process
        return LocalHandle(process, lambda: self._release(process, device))

    def _release(self, process: Process, device: str | None) -> None:
        self.running.pop(id(process), None)
        if device is not None and device in self.busy:
            self.busy.remove(device)

    def describe(self) -> str:
        kind = "warm" if self.launcher is warm_launcher else "local"
        return f"{self.capacity} {kind} worker(s) x {self.threads} thread(s)"

    def close(self) -> None:
        """End any run still in flight (the protocol waits for its runs, so only after an error)."""
        for process in list(self.running.values()):
            process.kill()
            process.wait()
        self.running.clear()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def make_executor(config: ExecutorConfig, *, workers: int | None, threads: int | None = None,
                  devices: Sequence[str] | None = None, launcher: Launcher | None = None) -> Executor:
    """The executor ``config`` names. ``workers``: runs at once (default 1 locally; unbounded on Ray);
    ``threads``: threads per run (default: local, the cores / workers; Ray, ``num_cpus``); ``launcher``
    starts the local backend's processes (default: warm children, or subprocesses with ``warm`` off)."""
    if config.backend == "local":
        workers = workers or 1
        launcher = launcher or (warm_launcher if config.warm else subprocess_launcher)
        return LocalExecutor(workers, threads or max(1, cpu_count() // workers), devices, launcher)
    if devices:
        raise ConfigError("devices: names GPUs of this machine for the local backend; on ray, request GPUs "
                          "per run with executor.num_gpus")
    try:
        from kdlab.protocols.ray_executor import RayExecutor  # Ray is an optional extra, imported when chosen
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        raise ConfigError('executor.backend: ray needs Ray, which is not installed; pip install "kdlab[ray]"'
                          ) from None
    return RayExecutor(config, workers=workers, threads=threads or max(1, math.ceil(config.num_cpus)))
