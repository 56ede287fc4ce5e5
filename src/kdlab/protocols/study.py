"""``kdlab study STUDY.yaml``: run a robustness grid as ordinary runs, in parallel, resumably.

The study directory (``OUT_DIR/NAME``) holds ``study.yaml`` (the study as validated), ``labels/`` (one
noisy-label file per noise condition, drawn once and named in every run of that condition, teacher
and students alike, by ``data.noise.labels``), ``configs/`` (each job's run config), ``runs/`` (the run
directories), ``logs/`` (each job's output), ``status/`` (see :mod:`.records`) and ``results.jsonl``.

Scheduling: jobs start in study order as soon as their teacher is done, at most ``workers`` at a time,
each a ``kdlab train`` subprocess limited to ``threads_per_worker`` threads. Resuming is rerunning the
same command: finished runs (``summary.json`` present) are skipped, and any finished run missing from
``results.jsonl`` is added; an unfinished run continues from its ``last.pt`` (``kdlab train --resume``),
or starts over when it has none; failed runs are tried again; students of a failed teacher are marked
blocked. A lock file keeps two studies from sharing a directory. On Ctrl-C the children are
interrupted too (on Linux they also end when the study process is killed) and the study can be rerun.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

from kdlab.config.load import ConfigError, validate
from kdlab.core import checkpoint
from kdlab.core.registry import UnknownNameError
from kdlab.core.runtime import Runtime
from kdlab.data import build_data
from kdlab.methods.registry import resolve_method
from kdlab.models.registry import MODELS
from kdlab.protocols.grid import Job, expand
from kdlab.protocols.records import (
    RESULTS,
    append_result,
    config_digest,
    read_results,
    read_status,
    read_summary,
    result_record,
    write_status,
)
from kdlab.protocols.study_schema import StudyConfig


class Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


Launcher = Callable[[list[str], Path, dict[str, str]], Process]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def subprocess_launcher(command: list[str], log: Path, env: dict[str, str]) -> Process:
    """Start ``command`` with its output appended to ``log``."""
    with log.open("a") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


@dataclass
class Outcome:
    """How a study invocation ended: job ids by final state."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


class Study:
    """A study bound to its directory; :meth:`run` does the work (see the module docstring)."""

    def __init__(self, config: StudyConfig, folder: Path, *, workers: int | None = None,
                 launcher: Launcher = subprocess_launcher, poll_interval: float = 0.5,
                 echo: Callable[[str], None] = print) -> None:
        self.config = config
        self.dir = Path(config.out_dir) / config.name
        self.jobs = expand(config, folder, self.dir.resolve())
        self.by_id = {job.id: job for job in self.jobs}
        self.workers = workers or config.workers
        self.threads = config.threads_per_worker or max(1, _cpu_count() // self.workers)
        self.launcher = launcher
        self.poll_interval = poll_interval
        self.echo = echo
        self.device_of: dict[str, str] = {}

    # ------------------------------------------------------------------ state on disk
    def run_dir(self, job: Job) -> Path:
        return self.dir / "runs" / job.id

    def finished(self, job: Job) -> bool:
        """Whether ``job``'s run has a readable ``summary.json`` (a torn one is an unfinished run)."""
        return read_summary(self.run_dir(job)) is not None

    def _record(self, job: Job, listed: set[str]) -> None:
        """Mark ``job`` done and list it in results.jsonl (once)."""
        if job.id not in listed:
            summary = read_summary(self.run_dir(job)) or {}
            append_result(self.dir / RESULTS, result_record(job, summary, self.dir.resolve()))
            listed.add(job.id)
        write_status(self.dir, job.id, state="done")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{self.dir}: another kdlab study is running in this directory") from None
            yield

    def _prepare(self) -> None:
        labels = (self.dir / "labels").resolve()
        for job in self.jobs:
            if job.labels_key is not None:
                job.tree["data"]["noise"]["labels"] = str(labels / f"{job.labels_key}.pt")
        self.check()
        for sub in ("configs", "runs", "logs", "status", "labels"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "study.yaml").write_text(
            yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))

    def check(self) -> None:
        """Every job's config is valid, names models of the zoo (or torchvision:/timm:) and gives its
        method parameters and loss weights it knows: what a run would refuse at its start, found
        before any run starts."""
        for job in self.jobs:
            source = f"study job {job.id}"
            config = validate(job.tree, source=source)
            models = [("student", config.student), ("teacher", config.teacher),
                      *((f"teachers.{i}", m) for i, m in enumerate(config.teachers))]
            for key, model in models:
                if model is not None and ":" not in model.name:
                    try:
                        MODELS.get(model.name)
                    except UnknownNameError as exc:
                        raise ConfigError(f"{source}: {key}.name: {exc}") from None
            resolve_method(config.method, source)

    def _make_labels(self, job: Job) -> None:
        """Draw the condition's noisy labels once (from this job's data settings) into ``labels/``."""
        path = Path(job.tree["data"]["noise"]["labels"])
        if path.is_file():
            return
        data_tree = job.tree["data"]
        tree = {**job.tree, "data": {**data_tree, "noise": {**data_tree["noise"], "labels": None}}}
        config = validate(tree, source=f"study job {job.id}")
        data = build_data(config.data, Runtime(seed=config.train.seed))
        checkpoint.save_atomic(data.corruption.record, path)
        self.echo(f"labels {job.labels_key}: realized train noise "
                  f"{data.corruption.report['noise']['realized_rate_train']:.4f}")

    # ------------------------------------------------------------------ running
    def command(self, job: Job) -> list[str]:
        """The ``kdlab train`` command of ``job``: a resume when its run has a ``last.pt``."""
        run_dir = self.run_dir(job)
        base = [sys.executable, "-m", "kdlab.cli.main", "train"]
        if (run_dir / "last.pt").is_file():
            return [*base, "--resume", str(run_dir), "--quiet"]
        if run_dir.exists():
            shutil.rmtree(run_dir)
        path = self.dir / "configs" / f"{job.id}.yaml"
        path.write_text(yaml.safe_dump(job.tree, sort_keys=False))
        return [*base, str(path), "--quiet"]

    def _launch(self, job: Job, running: dict[str, tuple[Job, Process]]) -> Process:
        """Start ``job``, on the device (``devices``) with the fewest runs in flight."""
        if job.labels_key is not None:
            self._make_labels(job)
        command = self.command(job)
        resumed = "--resume" in command
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "PYTHONUNBUFFERED": "1"}
        if self.config.devices:
            busy = [self.device_of.get(job_id) for job_id in running]
            self.device_of[job.id] = env["CUDA_VISIBLE_DEVICES"] = min(self.config.devices, key=busy.count)
        attempt = read_status(self.dir, job.id).get("attempt", 0) + 1
        process = self.launcher(command, self.dir / "logs" / f"{job.id}.log", env)
        write_status(self.dir, job.id, state="running", attempt=attempt, pid=process.pid, resumed=resumed,
                     config=config_digest(job.tree), started=round(time.time(), 3))
        self.echo(f"start {job.id}" + (" (resuming)" if resumed else ""))
        return process

    def _next_ready(self, pending: list[Job]) -> Job | None:
        """The first pending job whose teacher (if any) has finished."""
        for job in pending:
            if job.depends is None or self.finished(self.by_id[job.depends]):
                return job
        return None

    def run(self) -> Outcome:
        """Run every unfinished job; returns the outcome (re-raises KeyboardInterrupt after cleanup)."""
        with self._lock():
            self._prepare()
            return self._schedule()

    def _schedule(self) -> Outcome:
        outcome = Outcome()
        listed = {r.get("id") for r in read_results(self.dir / RESULTS)}
        pending: list[Job] = []
        for job in self.jobs:
            if self.finished(job):
                self._record(job, listed)
                outcome.skipped.append(job.id)
                digest = read_status(self.dir, job.id).get("config")
                if digest is not None and digest != config_digest(job.tree):
                    self.echo(f"note: {job.id} finished with an earlier version of its config; delete "
                              f"{self.run_dir(job)} to run it again")
            else:
                pending.append(job)
        total, started_at = len(pending), time.perf_counter()
        self.echo(f"study {self.dir}: {len(self.jobs)} runs, {len(outcome.skipped)} already done, "
                  f"{total} to run on {self.workers} worker(s) x {self.threads} thread(s)")
        running: dict[str, tuple[Job, Process]] = {}
        try:
            while pending or running:
                self._reap(running, outcome, listed)
                self._block(pending, outcome)
                while len(running) < self.workers and (job := self._next_ready(pending)) is not None:
                    pending.remove(job)
                    running[job.id] = (job, self._launch(job, running))
                if running:
                    time.sleep(self.poll_interval)
                elif pending:
                    break
        except KeyboardInterrupt:
            self._interrupt(running)
            raise
        elapsed = time.perf_counter() - started_at
        self.echo(f"study {self.dir}: {len(outcome.done)} done, {len(outcome.skipped)} skipped, "
                  f"{len(outcome.failed)} failed, {len(outcome.blocked)} blocked in {elapsed:.0f} s; "
                  f"results in {self.dir / RESULTS}")
        return outcome

    def _reap(self, running: dict[str, tuple[Job, Process]], outcome: Outcome, listed: set[str]) -> None:
        for job_id, (job, process) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[job_id]
            if code == 0 and self.finished(job):
                self._record(job, listed)
                outcome.done.append(job_id)
                self.echo(f"done {job_id}: {_score(self.run_dir(job))}")
            else:
                write_status(self.dir, job_id, state="failed", returncode=code)
                outcome.failed.append(job_id)
                self.echo(f"FAILED {job_id} (exit {code}): {_last_line(self.dir / 'logs' / f'{job_id}.log')}")

    def _block(self, pending: list[Job], outcome: Outcome) -> None:
        for job in list(pending):
            if job.depends is not None and job.depends in outcome.failed + outcome.blocked:
                pending.remove(job)
                write_status(self.dir, job.id, state="blocked", reason=f"teacher {job.depends} failed")
                outcome.blocked.append(job.id)

    def _interrupt(self, running: dict[str, tuple[Job, Process]]) -> None:
        for _, process in running.values():
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        for job_id, (_, process) in running.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
            write_status(self.dir, job_id, state="interrupted")
        self.echo(f"interrupted; {len(running)} run(s) stopped. Rerun the same kdlab study command to resume")


def _score(run_dir: Path) -> str:
    summary = read_summary(run_dir) or {}
    last = summary.get("test_last") or {}
    return f"test top1 {last.get('top1', float('nan')):.2f} ({summary.get('wall_time_s', 0):.0f} s)"


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
