"""Plain supervised training: cross-entropy on the labels, no teacher (teachers and baselines)."""

from __future__ import annotations

from kdlab.data.batch import Batch
from kdlab.methods.base import Distiller, DistillOutput, StepContext
from kdlab.methods.registry import register_method


@register_method("ce")
class CrossEntropy(Distiller):
    """``L = CE(z_s, y)`` (label smoothing and soft targets as every CE term: ``Distiller.label_loss``);
    the baseline student and the way teachers are trained."""

    terms = ("ce",)
    default_weights = {"ce": 1.0}
    needs_teacher = False
    composable = True
    soft_targets = True

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        logits = self.student_forward(batch.inputs)
        return DistillOutput({"ce": self.label_loss(logits, batch.label_targets)}, logits)
