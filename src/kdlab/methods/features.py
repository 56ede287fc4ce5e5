"""The base of methods that read intermediate features through forward hooks.

Student and teacher features are tapped by module path (``method.params.student_layers`` /
``teacher_layers``; a ``:input`` suffix reads a module's input, i.e. a pre-activation), or, when not
given, from the models' stage presets through the method's :meth:`FeatureDistiller.default_taps`.
A dummy forward at construction records the feature shapes, so methods can size their connectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, Distiller
from kdlab.models import FeatureTaps, StagePreset, TapPoint, stage_preset


class FeatureParams(BaseModel):
    """Layer choice shared by all feature methods; subclass it to add a method's own parameters."""

    model_config = ConfigDict(extra="forbid")
    student_layers: list[str] | None = None
    teacher_layers: list[str] | None = None


@dataclass
class FeatureForward:
    student_logits: Tensor
    student_features: list[Tensor]
    teacher_logits: Tensor
    teacher_features: list[Tensor]


def _probe_shapes(model: nn.Module, taps: FeatureTaps, input_shape: Sequence[int]) -> list[torch.Size]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, *input_shape))
    shapes = [f.shape[1:] for f in taps.features]
    taps.clear()
    model.train(was_training)
    return shapes


class FeatureDistiller(Distiller):
    """Taps student and teacher features; subclasses implement ``default_taps`` and ``forward``."""

    Params = FeatureParams
    teacher_cache = "features"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: FeatureParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        student_points = self._tap_points(student, context.student_name, params.student_layers, "student")
        teacher_points = self._tap_points(teacher, context.teacher_name, params.teacher_layers, "teacher")
        self.student_taps = FeatureTaps(student, student_points)
        self.teacher_taps = FeatureTaps(teacher, teacher_points)
        self.student_shapes = _probe_shapes(student, self.student_taps, context.input_shape)
        self.teacher_shapes = _probe_shapes(teacher, self.teacher_taps, context.input_shape)

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        """The tap points used when the config names no layers (default: the stage ends)."""
        return list(preset.stage_taps())

    def _tap_points(self, model: nn.Module, name: str, explicit: list[str] | None,
                    role: str) -> list[TapPoint]:
        key = f"method.params.{role}_layers"
        if explicit:
            try:
                return [TapPoint.parse(spec) for spec in explicit]
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        try:
            preset = stage_preset(name, model)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{key}: {role} {name!r} has no stage preset ({exc}); "
                              "name its layers by module path") from None
        return self.default_taps(preset, role)

    def run_student(self, inputs: Tensor) -> Tensor:
        """The student's logits alone, for stages that use no teacher term (its taps are discarded)."""
        logits = self.student(inputs)
        self.student_taps.clear()
        return logits

    def run_models(self, batch: Batch) -> FeatureForward:
        """Teacher (no-grad) and student forwards with their tapped features.

        When the batch carries cached teacher outputs, the teacher is not run: its logits and features
        come from the cache.
        """
        if batch.teacher is not None:
            teacher_logits = batch.teacher["logits"]
            teacher_features = [batch.teacher[f"feature{i}"] for i in range(len(self.teacher_taps.taps))]
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(self.teacher_inputs(batch.inputs))
            teacher_features = self.teacher_taps.features
        student_logits = self.student(batch.inputs)
        student_features = self.student_taps.features
        self.teacher_taps.clear()
        self.student_taps.clear()
        return FeatureForward(student_logits, student_features, teacher_logits, teacher_features)
