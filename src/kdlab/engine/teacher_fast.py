"""The teacher's fast path of a run: its ``fast`` settings resolved against the run's training settings."""

from __future__ import annotations

from kdlab.config.schema import TeacherFastConfig, TrainConfig
from kdlab.engine.precision import Precision
from kdlab.models.fast import FastPlan


def teacher_plan(settings: TeacherFastConfig, train: TrainConfig, precision: Precision) -> FastPlan:
    """Fold and cast as set (the cast to the autocast dtype, none in fp32); channels_last and compile as
    set, else as the student's (``train.channels_last``, ``train.compile`` in ``train.compile_mode``)."""
    return FastPlan(
        fold_bn=settings.fold_bn,
        dtype=precision.dtype if settings.cast else None,
        channels_last=train.channels_last if settings.channels_last is None else settings.channels_last,
        compile=train.compile if settings.compile is None else settings.compile,
        compile_mode=train.compile_mode,
    )
