"""Plain supervised training: cross-entropy on the labels, no teacher (teachers and baselines)."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from kdlab.data.batch import Batch
from kdlab.methods.base import Distiller, DistillOutput, StepContext
from kdlab.methods.registry import register_method


class CEParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


@register_method("ce")
class CrossEntropy(Distiller):
    """``L = CE(z_s, y)``; the baseline student and the way teachers are trained."""

    terms = ("ce",)
    default_weights = {"ce": 1.0}
    needs_teacher = False
    Params = CEParams
    composable = True

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        logits = self.student_forward(batch.inputs)
        ce = F.cross_entropy(logits.float(), batch.targets, label_smoothing=self.params.label_smoothing)
        return DistillOutput({"ce": ce}, logits)
