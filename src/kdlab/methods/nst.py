"""NST: neuron selectivity transfer (Huang & Wang, 2017, "Like What You Like: Knowledge Distill via
Neuron Selectivity Transfer", arXiv:1707.01219).

Each channel's spatial response is one sample of a distribution: a layer's map (B x C x H x W) becomes
C vectors of length HW per image, each L2-normalised. NST matches the student's and the teacher's
distributions by the squared maximum mean discrepancy with the polynomial kernel
``k(a, b) = (a^T b)^2`` (degree 2, c = 0). Per layer pair (the larger map average-pooled to the
smaller one's size; channel counts may differ):

    MMD^2 = mean_{b,i,i'} k(t_i, t_i') + mean_{b,j,j'} k(s_j, s_j') - 2 * mean_{b,j,i} k(s_j, t_i)

    L_nst = sum over layer pairs of MMD^2

This equals RepDistiller's ``sum(NSTLoss()(g_s, g_t))`` (and mdistiller's NST) exactly. Default
layers: every stage end of the presets (f1..f3 of CIFAR ResNets/WRNs); default weight 50 (RepDistiller
and mdistiller). No extra parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, DistillOutput, StepContext
from kdlab.methods.connectors import align_spatial, check_pairs
from kdlab.methods.features import FeatureDistiller, FeatureParams
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """``mean_{b,i,j} (a[b,i] . b[b,j])^2`` over B x Ca x Cb channel pairs, float32 even under autocast."""
    with torch.autocast(a.device.type, enabled=False):
        return (a @ b.transpose(1, 2)).pow(2).mean()


def nst_layer_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Squared MMD with the degree-2 polynomial kernel between channel distributions, float32."""
    student, teacher = align_spatial(student.float(), teacher.float())
    s = F.normalize(student.flatten(2), dim=2)
    t = F.normalize(teacher.flatten(2), dim=2)
    return _poly_kernel_mean(t, t) + _poly_kernel_mean(s, s) - 2 * _poly_kernel_mean(s, t)


def nst_loss(students: Sequence[Tensor], teachers: Sequence[Tensor]) -> Tensor:
    """``sum_j`` of :func:`nst_layer_loss` over the layer pairs."""
    return sum(nst_layer_loss(s, t) for s, t in zip(students, teachers, strict=True))


@register_method("nst")
class NeuronSelectivityTransfer(FeatureDistiller):
    """CE plus the polynomial-kernel MMD between channel activation patterns at each layer pair."""

    terms = ("ce", "nst")
    default_weights = {"ce": 1.0, "nst": 50.0}
    Params = FeatureParams
    soft_targets = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: FeatureParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        check_pairs("nst", self.student_shapes, self.teacher_shapes)

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return list(preset.stages)

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        losses: dict[str, Tensor] = {}
        if step.weights["nst"]:
            out = self.run_models(batch)
            logits = out.student_logits
            losses["nst"] = nst_loss(out.student_features, out.teacher_features)
        else:
            logits = self.run_student(batch.inputs)
        if step.weights["ce"]:
            losses["ce"] = self.label_loss(logits, batch.label_targets)
        return DistillOutput(losses, logits)
