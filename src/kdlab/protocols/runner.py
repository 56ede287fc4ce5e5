"""Run a set of ordinary runs on an executor, resumably: what ``kdlab study`` and ``kdlab dg`` share.

Each :class:`Run` is a directory and the config that makes it, and may wait for another run (a student
for its teacher). Its :class:`RunKind` says which ``kdlab`` command makes it and when it is finished:
:data:`TRAIN` (``kdlab train``, finished when ``summary.json`` is readable) unless the protocol gives
another (a study's teacher-cache fill, :mod:`.cache_fill`). The runner keeps, in its state directory,
``configs/`` (each run's config), ``logs/`` (each run's output) and ``status/`` (see :mod:`.records`),
and guarantees, whichever backend executes the runs:

- a finished run is never run again;
- an unfinished run continues where it stopped (a training run from its ``last.pt`` with
  ``kdlab train --resume``, or over again without one);
- a failed run is tried again up to ``retries`` times in one invocation (each try resumes), and a rerun
  of the protocol tries it again;
- the runs waiting for a failed run are marked blocked;
- on Ctrl-C every run in flight is interrupted (killed after 30 s), and a rerun continues.

The protocol learns of each finished run through ``on_finished`` (called once per run and invocation,
from this process only, so results files are written by one writer) and may prepare a run's inputs
in ``before_start``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from kdlab.protocols.executor import Executor, Handle, Task
from kdlab.protocols.records import config_digest, read_status, read_summary, write_status

INTERRUPT_GRACE_S = 30.0


class RunKind(Protocol):
    """The ``kdlab`` command that makes a run and the test that it is finished."""

    def finished(self, run_dir: Path) -> bool:
        """Whether the run in ``run_dir`` is complete (it is then never run again)."""
        ...

    def argv(self, run_dir: Path, config: Path) -> list[str]:
        """The ``kdlab`` arguments that make (or continue) the run from its config file ``config``."""
        ...

    def describe(self, run_dir: Path) -> str:
        """One line on the finished run, for the progress output."""
        ...


class TrainRun:
    """``kdlab train``: finished when its ``summary.json`` is readable; an unfinished run resumes from its
    ``last.pt``, and one without starts over in a fresh directory."""

    def finished(self, run_dir: Path) -> bool:
        return read_summary(run_dir) is not None

    def argv(self, run_dir: Path, config: Path) -> list[str]:
        if (run_dir / "last.pt").is_file():
            return ["train", "--resume", str(run_dir), "--quiet"]
        if run_dir.exists():
            shutil.rmtree(run_dir)
        return ["train", str(config), "--quiet"]

    def describe(self, run_dir: Path) -> str:
        summary = read_summary(run_dir) or {}
        last = summary.get("test_last") or {}
        return f"test top1 {last.get('top1', float('nan')):.2f} ({summary.get('wall_time_s', 0):.0f} s)"


TRAIN = TrainRun()


@dataclass
class Run:
    """One run: its id (a file name), directory, config tree, the id of the run it waits for, and its
    kind (the command that makes it)."""

    id: str
    run_dir: Path
    tree: dict[str, Any]
    depends: str | None = None
    kind: RunKind = TRAIN

    @property
    def finished(self) -> bool:
        return self.kind.finished(self.run_dir)


@dataclass
class Outcome:
    """How an invocation ended: run ids by final state."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


class Runner:
    """Runs ``runs`` on ``executor``; the state lives under ``state_dir`` (see the module docstring)."""

    def __init__(self, state_dir: Path, executor: Executor, *, retries: int = 1, poll_interval: float = 0.5,
                 echo: Callable[[str], None] = print,
                 on_finished: Callable[[Run, bool], None] = lambda run, skipped: None,
                 before_start: Callable[[Run], None] = lambda run: None) -> None:
        self.dir, self.executor, self.retries = state_dir, executor, retries
        self.poll_interval, self.echo = poll_interval, echo
        self.on_finished, self.before_start = on_finished, before_start

    def command(self, run: Run) -> list[str]:
        """The ``kdlab`` arguments of ``run`` (its kind's), with its config written to ``configs/``."""
        path = self.dir / "configs" / f"{run.id}.yaml"
        path.write_text(yaml.safe_dump(run.tree, sort_keys=False))
        return run.kind.argv(run.run_dir, path)

    def log(self, run: Run) -> Path:
        return self.dir / "logs" / f"{run.id}.log"

    def run(self, runs: Sequence[Run]) -> Outcome:
        """Run every unfinished run; re-raises KeyboardInterrupt once the runs in flight are stopped."""
        for sub in ("configs", "logs", "status"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        outcome = Outcome()
        by_id = {run.id: run for run in runs}
        pending = []
        for run in runs:
            if run.finished:
                self.on_finished(run, True)
                write_status(self.dir, run.id, state="done")
                outcome.skipped.append(run.id)
            else:
                pending.append(run)
        total, started_at = len(pending), time.perf_counter()
        self.echo(f"{self.dir}: {len(runs)} runs, {len(outcome.skipped)} already done, {total} to run on "
                  f"{self.executor.describe()}")
        running: dict[str, tuple[Run, Handle]] = {}
        tries: dict[str, int] = {}
        try:
            while pending or running:
                self._reap(running, pending, tries, outcome)
                self._block(pending, outcome)
                capacity = self.executor.capacity
                while capacity is None or len(running) < capacity:
                    run = next((r for r in pending if r.depends is None or by_id[r.depends].finished), None)
                    if run is None:
                        break
                    pending.remove(run)
                    tries[run.id] = tries.get(run.id, 0) + 1
                    running[run.id] = (run, self._start(run))
                if running:
                    time.sleep(self.poll_interval)
                elif pending:
                    break
        except KeyboardInterrupt:
            self._interrupt(running)
            raise
        self.echo(f"{self.dir}: {len(outcome.done)} done, {len(outcome.skipped)} skipped, "
                  f"{len(outcome.failed)} failed, {len(outcome.blocked)} blocked in "
                  f"{time.perf_counter() - started_at:.0f} s")
        return outcome

    def _start(self, run: Run) -> Handle:
        self.before_start(run)
        argv = self.command(run)
        resumed = "--resume" in argv
        attempt = read_status(self.dir, run.id).get("attempt", 0) + 1
        handle = self.executor.start(Task(argv, self.log(run)))
        write_status(self.dir, run.id, state="running", attempt=attempt, pid=handle.pid, resumed=resumed,
                     config=config_digest(run.tree), started=round(time.time(), 3))
        self.echo(f"start {run.id}" + (" (resuming)" if resumed else ""))
        return handle

    def _reap(self, running: dict[str, tuple[Run, Handle]], pending: list[Run], tries: dict[str, int],
              outcome: Outcome) -> None:
        for run_id, (run, handle) in list(running.items()):
            code = handle.poll()
            if code is None:
                continue
            del running[run_id]
            if code == 0 and run.finished:
                self.on_finished(run, False)
                write_status(self.dir, run_id, state="done", returncode=0)
                outcome.done.append(run_id)
                self.echo(f"done {run_id}: {run.kind.describe(run.run_dir)}")
                continue
            write_status(self.dir, run_id, state="failed", returncode=code)
            reason = _last_line(self.log(run))
            if tries[run_id] <= self.retries:
                pending.insert(0, run)
                self.echo(f"retrying {run_id} (exit {code}, try {tries[run_id] + 1} of {self.retries + 1}): "
                          f"{reason}")
            else:
                outcome.failed.append(run_id)
                self.echo(f"FAILED {run_id} (exit {code}): {reason}")

    def _block(self, pending: list[Run], outcome: Outcome) -> None:
        stopped = set(outcome.failed + outcome.blocked)
        for run in list(pending):
            if run.depends is not None and run.depends in stopped:
                pending.remove(run)
                write_status(self.dir, run.id, state="blocked", reason=f"{run.depends} failed")
                outcome.blocked.append(run.id)
                stopped.add(run.id)

    def _interrupt(self, running: dict[str, tuple[Run, Handle]]) -> None:
        for _, handle in running.values():
            handle.interrupt()
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        for run_id, (_, handle) in running.items():
            if handle.wait(timeout=max(0.1, deadline - time.monotonic())) is None:
                handle.kill()
            write_status(self.dir, run_id, state="interrupted")
        self.echo(f"interrupted; {len(running)} run(s) stopped. Rerun the same command to resume")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"
