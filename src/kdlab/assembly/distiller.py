"""The run's distiller: the student, the teacher (or teachers) and the method of its config."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from kdlab.assembly.networks import build_network, normalization, teacher_normalization
from kdlab.config.schema import ModelConfig, RunConfig
from kdlab.core.errors import ConfigError
from kdlab.data import DataBundle
from kdlab.ensemble import TeacherEnsemble
from kdlab.methods import METHODS, DistillContext, Distiller, build_distiller

NEEDS_WEIGHTS = ("a teacher needs trained weights; train one with method.name=ce and pass its run directory "
                 "here")


def build_teacher(config: ModelConfig, data: DataBundle, key: str) -> nn.Module:
    """A teacher network with its trained weights (a checkpoint or pretrained weights are required)."""
    if config.checkpoint is None and not config.pretrained:
        raise ConfigError(f"{key}.checkpoint: {NEEDS_WEIGHTS}")
    return build_network(config, data, key)


def build_teacher_ensemble(configs: Sequence[ModelConfig], data: DataBundle) -> TeacherEnsemble:
    """The ``teachers`` list as one frozen ensemble; every member must expect the same normalization."""
    if len({repr(teacher_normalization(c, data, f"teachers.{i}")) for i, c in enumerate(configs)}) > 1:
        raise ConfigError("teachers: every teacher must expect the same input normalization (mean/std)")
    return TeacherEnsemble([build_teacher(member, data, f"teachers.{i}") for i, member in enumerate(configs)])


def build_run_distiller(config: RunConfig, data: DataBundle, *, student: nn.Module | None = None,
                        teacher: nn.Module | None = None) -> Distiller:
    """The run's distiller: student, teacher(s) and method from the config (given modules win; a given
    teacher expects the config's ``mean``/``std``, else the data's, and is copied, so that freezing it
    and its fast path leave the caller's module as it was; a given student is trained in place)."""
    student = student if student is not None else build_network(config.student, data, "student")
    given_teacher = teacher is not None
    if given_teacher:
        teacher = copy.deepcopy(teacher)
    if teacher is None and config.teacher is not None:
        teacher = build_teacher(config.teacher, data, "teacher")
    if teacher is None and config.teachers:
        teacher = build_teacher_ensemble(config.teachers, data)
    context = DistillContext(
        num_classes=data.num_classes, input_shape=tuple(data.input_shape),
        num_train_samples=data.train.num_samples, student_name=config.student.name,
        teacher_name=config.teacher.name if config.teacher else "+".join(t.name for t in config.teachers),
    )
    teacher_config, teacher_key = (config.teacher, "teacher") if config.teacher else \
        (next(iter(config.teachers), None), "teachers.0")
    distiller = build_distiller(config.method, student, teacher, context,
                                student_norm=normalization(config.student, data),
                                teacher_norm=normalization(teacher_config, data, teacher_key) if given_teacher
                                else teacher_normalization(teacher_config, data, teacher_key))
    if config.data.mix is not None and not distiller.soft_targets:
        takers = sorted(name for name in METHODS.names() if METHODS.get(name).soft_targets)
        raise ConfigError(f"data.mix: method {config.method.name!r} reads the class ids beyond its CE term "
                          f"(a mixed batch has no single class per image); remove data.mix, or use one of: "
                          f"{', '.join(takers)}")
    if distiller.keys_samples and not data.sample_ids:
        raise ConfigError(f"method.name: {config.method.name!r} keeps state per training sample, keyed by "
                          "sample ids that a DataLoader or iterable dataset does not give; pass a map-style "
                          "Dataset")
    return distiller
