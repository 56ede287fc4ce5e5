"""SP: similarity-preserving knowledge distillation (Tung & Mori, ICCV 2019, "Similarity-Preserving
Knowledge Distillation").

For a batch of B feature maps, flattened per sample to Q in R^{B x N}, the B x B Gram matrix G = Q Q^T
is normalized row by row to unit L2 norm; the loss compares the student's and the teacher's:

    G~ = row_l2_normalize(Q Q^T)
    L_sp = (1/B^2) * sum_{layer pairs} || G~_T - G~_S ||_F^2
    L    = w_ce * CE(z_s, y) + w_sp * L_sp

This is the paper's definition and RepDistiller's / mdistiller's ``Similarity`` (rows L2-normalized,
sum of squares over B^2). torchdistill's ``SPKDLoss`` normalizes rows to unit L1 norm instead; it is not
offered. Only B x B matrices are compared, so channels and resolution may differ between the models.
Default layer: the end of the last stage (RepDistiller's ``feat[-2]``, the last conv group before
pooling); default weights are RepDistiller's CIFAR-100 setting (ce 1, sp 3000).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillOutput, StepContext
from kdlab.methods.features import FeatureDistiller
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint


def _similarity(features: Tensor) -> Tensor:
    with torch.autocast(features.device.type, enabled=False):
        flat = features.float().flatten(1)
        return F.normalize(flat @ flat.t(), p=2, dim=1)


def sp_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """``||row_l2(G_T) - row_l2(G_S)||_F^2 / B^2`` for one pair of feature maps, in float32."""
    batch = student_features.shape[0]
    diff = _similarity(teacher_features) - _similarity(student_features)
    return diff.pow(2).sum() / batch**2


@register_method("sp")
class SimilarityPreserving(FeatureDistiller):
    """CE plus the similarity-preserving loss, summed over the paired layers (default: the last stage)."""

    terms = ("ce", "sp")
    default_weights = {"ce": 1.0, "sp": 3000.0}
    soft_targets = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if len(self.student_shapes) != len(self.teacher_shapes):
            raise ConfigError(
                f"method.params.student_layers: sp pairs layers one to one, but got "
                f"{len(self.student_shapes)} student and {len(self.teacher_shapes)} teacher layers")

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return [preset.stages[-1]]

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        out = self.run_models(batch)
        sp = sum(sp_loss(s, t) for s, t in zip(out.student_features, out.teacher_features, strict=True))
        return DistillOutput({"ce": self.label_loss(out.student_logits, batch.label_targets), "sp": sp},
                             out.student_logits)
