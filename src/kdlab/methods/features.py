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
from kdlab.core.registry import UnknownNameError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, Distiller
from kdlab.models import FeatureTaps, ModelError, StagePreset, TapPoint, probe_forward, stage_preset


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
    probe_forward(model, input_shape)
    shapes = [f.shape[1:] for f in taps.features]
    taps.clear()
    return shapes


class FeatureDistiller(Distiller):
    """Taps student and teacher features; subclasses implement ``default_taps`` and ``forward``."""

    Params = FeatureParams
    teacher_cache = "features"
    composable = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: FeatureParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        student_points = self._tap_points(student, context.student_name, params.student_layers, "student")
        teacher_points = self._tap_points(teacher, context.teacher_name, params.teacher_layers, "teacher")
        self.student_taps = self._taps(student, student_points, "student")
        self.teacher_taps = self._taps(teacher, teacher_points, "teacher")
        self.student_shapes = _probe_shapes(student, self.student_taps, context.input_shape)
        self.teacher_shapes = _probe_shapes(teacher, self.teacher_taps, context.input_shape)

    def teacher_feature_taps(self) -> tuple[FeatureTaps, list[torch.Size]]:
        return self.teacher_taps, self.teacher_shapes

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        """The tap points used when the config names no layers (default: the stage ends)."""
        return list(preset.stage_taps())

    @staticmethod
    def _taps(model: nn.Module, points: list[TapPoint], role: str) -> FeatureTaps:
        try:
            return FeatureTaps(model, points)
        except ModelError as exc:
            raise ConfigError(f"method.params.{role}_layers: {exc}") from None

    def _tap_points(self, model: nn.Module, name: str, explicit: list[str] | None,
                    role: str) -> list[TapPoint]:
        key = f"method.params.{role}_layers"
        if explicit:
            try:
                return [TapPoint.parse(spec) for spec in explicit]
            except ModelError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        try:
            preset = stage_preset(name, model)
        except (UnknownNameError, ModelError) as exc:
            raise ConfigError(f"{key}: {role} {name!r} has no stage preset ({exc}); "
                              "name its layers by module path") from None
        return self.default_taps(preset, role)

    def run_student(self, inputs: Tensor) -> Tensor:
        """The student's logits alone, for stages that use no teacher term (its taps are discarded)."""
        logits = self.student_forward(inputs)
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
            teacher_logits = self.teacher_logits(batch.inputs)
            teacher_features = self.teacher_taps.features
        student_logits = self.student_forward(batch.inputs)
        student_features = self.student_taps.features
        self.teacher_taps.clear()
        self.student_taps.clear()
        return FeatureForward(student_logits, student_features, teacher_logits, teacher_features)
