"""``kdlab study STUDY.yaml``: run a robustness grid as ordinary runs, in parallel, resumably.

The study directory (``OUT_DIR/NAME``) holds ``study.yaml`` (the study as validated), ``labels/`` (one
noisy-label file per noise condition, drawn once and named in every run of that condition, teacher
and students alike, by ``data.noise.labels``), ``configs/`` (each job's run config), ``runs/`` (the run
directories), ``teacher_cache/`` (the shared teacher caches, one per fill job), ``logs/`` (each job's
output), ``status/`` (see :mod:`.records`) and ``results.jsonl``.

Teacher outputs are shared (``teacher.share_outputs``, default true; :mod:`.shared_cache`): each teacher
is followed by a ``kdlab cache-teacher`` job that fills a replayable cache once (the teacher's logits on
pre-drawn augmentations, one per set of cache-relevant student settings: data, models, ``train``
settings and epochs), and every student whose method replays teacher logits waits for that fill and
reads the cache instead of running its teacher, with the cache's validity checks. Other students run
the live teacher. A fill writes no results line; a student's line names the fill it replayed
(``shared_cache``) and its summary the cache (``teacher_cache``).

Scheduling is :mod:`.runner`'s on the executor the study's ``executor`` section names (:mod:`.executor`:
local subprocesses, or Ray tasks): jobs start in study order as soon as the job they wait for (teacher
or cache fill) is done, at most ``workers`` at a time. Resuming is rerunning the same command: finished
runs (``summary.json`` present; a fill: every unit of its cache filled) are skipped, and any finished
run missing from ``results.jsonl`` is added; an unfinished run continues from its ``last.pt`` (a fill
from its filled units); failed runs are tried again (``executor.retries`` times at once, and on every
rerun); the jobs waiting for a failed one (a fill and the students of a failed teacher) are marked
blocked. A lock file keeps two studies from sharing a directory. On Ctrl-C the runs are interrupted too
(on Linux local runs also end when the study process is killed, and Ray ends a killed driver's tasks)
and the study can be rerun.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from kdlab.config.load import ConfigError, validate
from kdlab.core import checkpoint
from kdlab.core.registry import UnknownNameError
from kdlab.core.runtime import Runtime
from kdlab.data import build_data
from kdlab.methods.registry import resolve_method
from kdlab.models.registry import MODELS
from kdlab.protocols.cache_fill import CACHE_FILL
from kdlab.protocols.executor import Executor, Launcher, make_executor
from kdlab.protocols.grid import Job, expand
from kdlab.protocols.records import (
    RESULTS,
    append_result,
    config_digest,
    read_results,
    read_status,
    read_summary,
)
from kdlab.protocols.result_line import hparams_of, run_config, run_line
from kdlab.protocols.runner import TRAIN, Outcome, Run, Runner
from kdlab.protocols.shared_cache import cache_dir
from kdlab.protocols.study_schema import StudyConfig

__all__ = ["Outcome", "Study", "study_line"]


def study_line(job: Job, summary: dict[str, Any], study_dir: Path) -> dict[str, Any]:
    """The results line (:mod:`.result_line`) of a finished job: its grid cell (condition, pair, method,
    seed and, for a searched method, the draw), who it is (role, models, teacher run, the searched
    values) and what the data condition was (noise and imbalance settings, the realized noise, the
    training class counts and groups)."""
    condition = job.condition
    corruption = summary.get("corruption", {})
    noise = corruption.get("noise") or {}
    identity = {
        "role": job.role,
        "condition": condition.name,
        "noise_type": condition.noise_type,
        "noise_rate": condition.noise_rate,
        "imbalance_profile": condition.imbalance_profile,
        "imbalance_ratio": condition.imbalance_ratio,
        "pair": job.pair,
        "model": job.model,
        "teacher_model": job.teacher_model,
        "teacher_run": job.teacher_job,
        "shared_cache": job.shared_cache,
        "method": job.method,
        "method_name": job.method_name,
        "draw": job.draw,
        "searched": job.searched,
        "classes": summary.get("classes"),
        "train_counts": corruption.get("train_counts"),
        "groups": corruption.get("groups"),
        "realized_noise_train": noise.get("realized_rate_train"),
        "realized_noise_val": noise.get("realized_rate_val"),
    }
    axes = {"condition": condition.name, "pair": job.pair, "method": job.method, "seed": job.seed}
    if job.draw is not None:
        axes["draw"] = job.draw
    run_dir = study_dir / "runs" / job.id
    searched = {key: value for key, value in job.searched.items() if value is not None}
    hparams = {**hparams_of(run_config(run_dir, job.tree)), **searched}
    return run_line(protocol="study", run_id=job.id, run_dir=run_dir, results_dir=study_dir, tree=job.tree,
                    axes=axes, seed=job.seed, identity=identity, summary=summary, hparams=hparams)


class Study:
    """A study bound to its directory; :meth:`run` does the work (see the module docstring).
    ``executor`` (default: the one the study file's ``executor`` section names) runs its jobs;
    ``launcher`` starts the local backend's subprocesses."""

    def __init__(self, config: StudyConfig, folder: Path, *, workers: int | None = None,
                 executor: Executor | None = None, launcher: Launcher | None = None,
                 poll_interval: float = 0.5, echo: Callable[[str], None] = print) -> None:
        self.config = config
        self.dir = Path(config.out_dir) / config.name
        self.jobs = expand(config, folder, self.dir.resolve())
        self.by_id = {job.id: job for job in self.jobs}
        self.workers = workers or config.workers
        self.executor = executor
        self.launcher = launcher
        self.poll_interval = poll_interval
        self.echo = echo
        self.listed: set[str] = set()

    # ------------------------------------------------------------------ state on disk
    def run_dir(self, job: Job) -> Path:
        """A run's directory, or a cache fill's cache."""
        return cache_dir(self.dir, job.id) if job.role == "cache" else self.dir / "runs" / job.id

    def _record(self, run: Run, skipped: bool) -> None:
        """List the finished ``run`` in results.jsonl (once); a cache fill has no results line."""
        job = self.by_id[run.id]
        if job.role == "cache":
            return
        if job.id not in self.listed:
            summary = read_summary(self.run_dir(job)) or {}
            append_result(self.dir / RESULTS, study_line(job, summary, self.dir.resolve()))
            self.listed.add(job.id)
        digest = read_status(self.dir, job.id).get("config")
        if skipped and digest is not None and digest != config_digest(job.tree):
            self.echo(f"note: {job.id} finished with an earlier version of its config; delete "
                      f"{self.run_dir(job)} to run it again")

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
    def _before_start(self, run: Run) -> None:
        job = self.by_id[run.id]
        if job.labels_key is not None:
            self._make_labels(job)

    def run(self) -> Outcome:
        """Run every unfinished job; returns the outcome (re-raises KeyboardInterrupt after cleanup)."""
        with self._lock():
            self._prepare()
            executor = self.executor or make_executor(
                self.config.executor, workers=self.workers, threads=self.config.threads_per_worker,
                devices=self.config.devices, launcher=self.launcher)
            try:
                return self._schedule(executor)
            finally:
                if self.executor is None:
                    executor.close()

    def _schedule(self, executor: Executor) -> Outcome:
        self.listed = {r.get("id") for r in read_results(self.dir / RESULTS)}
        runs = [Run(job.id, self.run_dir(job), job.tree, job.depends,
                    CACHE_FILL if job.role == "cache" else TRAIN) for job in self.jobs]
        runner = Runner(self.dir, executor, retries=self.config.executor.retries,
                        poll_interval=self.poll_interval, echo=self.echo, on_finished=self._record,
                        before_start=self._before_start)
        outcome = runner.run(runs)
        self.echo(f"study {self.dir}: results in {self.dir / RESULTS}")
        return outcome
