"""``train``: one run, top to bottom."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from kdlab.assembly import build_run_data, build_run_distiller, name_given_modules, start_runtime
from kdlab.config.schema import RunConfig
from kdlab.core import distributed
from kdlab.core.errors import RunInterrupted
from kdlab.data import UserData
from kdlab.engine import Callback, Trainer
from kdlab.engine.accumulation import Accumulation
from kdlab.engine.averaging import build_averager
from kdlab.engine.early_stopping import EarlyStopping
from kdlab.engine.stages import StageClock, plan_stages
from kdlab.robustness import class_breakdown
from kdlab.run.banner import banner
from kdlab.run.rundir import check_resumable, make_run_dir, run_lock, write_end, write_start
from kdlab.run.summary import summarize
from kdlab.run.teacher_cache import CacheReport, attach_teacher_cache

log = logging.getLogger("kdlab")


@dataclass
class RunResult:
    run_dir: Path | None
    summary: dict[str, Any]
    student: nn.Module


def train(
    config: RunConfig,
    *,
    resume: str | Path | None = None,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    callbacks: Sequence[Callback] = (),
    write: bool = True,
    user_data: UserData | None = None,
) -> RunResult:
    """Train one run. ``student``/``teacher`` modules, when given, replace those built from the config,
    and the run records the registry name that rebuilds each (or ``module:CLASS`` when none does);
    ``user_data``, when given, replaces the config's dataset (its ``data.name`` becomes ``python:TYPE``).

    Everything is checked before anything is written: a refused resume leaves the run as it was."""
    if user_data is not None:
        config = config.model_copy(deep=True)
        config.data.name = user_data.name()
    resume_from = check_resumable(config, Path(resume)) if resume is not None else None
    runtime = start_runtime(config.train)
    data = build_run_data(config, runtime, user_data)
    if resume is None and (student is not None or teacher is not None):
        config = name_given_modules(config, data, student, teacher)
    distiller = build_run_distiller(config, data, student=student, teacher=teacher)
    replay = attach_teacher_cache(config, data, distiller, runtime.device)
    stages = plan_stages(config, None if config.stages else distiller.default_stages(config))
    if replay is not None:
        clock = StageClock(stages, Accumulation(len(data.train), config.train.accumulate_grad_batches)
                           .steps_per_epoch)
        replay.require(clock.data_epoch(clock.total_steps - 1)[0] + 1)
    averager = build_averager(config.averaging, bn_source=data.train)
    stopping = config.train.early_stopping
    run_callbacks = [*callbacks, *([averager] if averager is not None else []),
                     *([CacheReport(replay)] if replay is not None else []),
                     *([EarlyStopping(stopping, config.train.select_metric)] if stopping is not None else [])]

    run_dir = None
    if write:
        if resume is not None:
            run_dir = Path(resume)
        elif distributed.is_main():
            run_dir = make_run_dir(config)
        run_dir = distributed.broadcast_object(run_dir)
    writes = run_dir is not None and distributed.is_main()
    with run_lock(run_dir) if writes else contextlib.nullcontext():
        trainer = Trainer(distiller, data.train, data.val, stages=stages, train=config.train,
                          device=runtime.device, run_dir=run_dir, callbacks=run_callbacks,
                          config=config.model_dump(mode="json"),
                          class_breakdown=class_breakdown(config, data),
                          teacher_fast=config.teacher_fast())
        if resume_from is not None:
            trainer.load_checkpoint(resume_from)
        else:
            trainer.enter_stage(0)
        if writes:
            write_start(run_dir, config, data)
        if distributed.is_main():
            log.info(banner(config, data, trainer, run_dir))
            for note in trainer.teacher_notes:
                log.info("teacher fast path: %s", note)

        started = time.perf_counter()
        try:
            final_val = trainer.fit()
        except KeyboardInterrupt:
            if run_dir is None:
                raise
            raise RunInterrupted(f"kdlab train --resume {run_dir}") from None
        summary = summarize(config, trainer, data, final_val, time.perf_counter() - started)
        if writes:
            write_end(run_dir, trainer, summary)
    return RunResult(run_dir, summary, trainer.distiller.student)
