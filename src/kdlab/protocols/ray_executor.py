"""The ``ray`` backend of :mod:`.executor`: each task is a Ray task with its resource request.

The task runs the same ``kdlab`` subprocess a local worker would, on whichever node Ray places it, with
``OMP_NUM_THREADS`` set to its CPU share and the GPUs Ray assigned it (Ray sets ``CUDA_VISIBLE_DEVICES``
in the worker, and the subprocess inherits it). Paths are the driver's: the study directory, data and
configs must lie on a filesystem every node sees at the same path, which is also what lets a run that a
lost node left behind resume from its ``last.pt`` on another. Ray does not retry a task itself
(``max_retries=0``): the protocol's runner decides, so a retry is rebuilt as a resume.

Ctrl-C is ``ray.cancel``: the task passes SIGINT to its subprocess and waits for it, so no run outlives
its task on a cluster the driver joined; a Ray instance the driver started is shut down after, ending
its workers and, through ``PR_SET_PDEATHSIG``, their subprocesses (as when a worker or the driver is
killed: Ray ends a dead driver's tasks). ``kill`` cancels with ``force``. Either way the run continues
from its latest ``last.pt`` (written at every evaluation) when the study is rerun.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, RayError, TaskCancelledError

from kdlab.core.errors import ConfigError
from kdlab.protocols.children import kdlab_command, thread_env
from kdlab.protocols.executor import INTERRUPTED, ExecutorConfig, Handle, Task, subprocess_launcher
from kdlab.protocols.warm import warm_launcher

LOST = -1


@ray.remote(max_retries=0)
def run_kdlab(argv: list[str], log: str, threads: int, cwd: str, warm: bool) -> int:
    """Run ``kdlab ARGV`` on this node with its output appended to ``log``; its exit code. ``warm``:
    as a child of this Ray worker's fork server (:mod:`.warm`), which outlives the task because Ray
    reuses its worker processes."""
    path = Path(log)
    with path.open("a") as handle:
        handle.write(f"kdlab: on node {socket.gethostname()} (Ray worker pid {os.getpid()})\n")
    launcher = warm_launcher if warm else subprocess_launcher
    process = launcher(kdlab_command(argv), path, {**os.environ, **thread_env(threads)}, Path(cwd))
    with path.open("a") as handle:
        handle.write(f"kdlab: run pid {process.pid}\n")
    try:
        return process.wait()
    except KeyboardInterrupt:  # ray.cancel: let the run stop at a clean point
        process.send_signal(signal.SIGINT)
        return process.wait()


class RayHandle:
    """A Ray task in flight; when Ray loses it (its worker or node died, or the task could not start),
    the reason is appended to the run's log."""

    pid = None

    def __init__(self, ref: ray.ObjectRef, log: Path) -> None:
        self.ref, self.log = ref, log

    def _code(self, timeout: float) -> int | None:
        try:
            return int(ray.get(self.ref, timeout=timeout))
        except GetTimeoutError:
            return None
        except TaskCancelledError:
            return INTERRUPTED
        except RayError as exc:
            reason = ([line.strip() for line in str(exc).splitlines() if line.strip()] or [""])[-1]
            with self.log.open("a") as handle:
                handle.write(f"kdlab: Ray lost the run ({type(exc).__name__}): {reason}\n")
            return LOST

    def poll(self) -> int | None:
        ready, _ = ray.wait([self.ref], timeout=0)
        return self._code(0) if ready else None

    def interrupt(self) -> None:
        ray.cancel(self.ref)

    def wait(self, timeout: float) -> int | None:
        return self._code(timeout)

    def kill(self) -> None:
        ray.cancel(self.ref, force=True)


class RayExecutor:
    """Tasks on the Ray cluster at ``config.address`` (or on a Ray instance started here), each
    requesting ``num_cpus`` and ``num_gpus``; ``workers`` caps the runs in flight (default: no cap)."""

    def __init__(self, config: ExecutorConfig, *, workers: int | None, threads: int) -> None:
        self.config, self.capacity, self.threads = config, workers, threads
        self.owned = not ray.is_initialized()
        if self.owned:
            on_sigterm = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(address=config.address, log_to_driver=False)
            except ConnectionError as exc:
                raise ConfigError(f"executor.address (--ray-address): cannot reach a Ray cluster at "
                                  f"{config.address!r}: {str(exc).splitlines()[0]}") from None
            if on_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)  # ray.init replaces it; a polite kill stays Ctrl-C
        self.remote = run_kdlab.options(num_cpus=config.num_cpus, num_gpus=config.num_gpus)

    def start(self, task: Task) -> Handle:
        ref = self.remote.remote(task.argv, str(task.log.resolve()), self.threads, str(task.cwd.resolve()),
                                 self.config.warm)
        return RayHandle(ref, task.log)

    def describe(self) -> str:
        where = self.config.address or "a Ray instance on this machine"
        cap = f", at most {self.capacity} at once" if self.capacity else ""
        return (f"Ray ({where}; {ray.cluster_resources().get('CPU', 0):g} CPUs), {self.config.num_cpus:g} "
                f"CPU(s) and {self.config.num_gpus:g} GPU(s) per run{cap}")

    def close(self) -> None:
        if self.owned:
            ray.shutdown()
