"""AT: activation-based attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to
Attention: Improving the Performance of Convolutional Neural Networks via Attention Transfer").

The attention map of a feature map ``F`` (B x C x H x W) is ``a(F) = sum_c |F_c|^p`` flattened to
B x HW and L2-normalised per sample, ``q = a / ||a||_2`` (p = 2). For each layer pair j (the larger
map first average-pooled to the smaller one's size, as RepDistiller and mdistiller do):

* ``mode: paper`` (default), the paper's Eq. 2 with its beta, which the paper sets per layer to
  "10^3 divided by the number of elements in the attention map and batch size":

      L_at = sum_j  1 / (H_j * W_j) * (1/B) * sum_b  1/2 * || q_S^j,b - q_T^j,b ||_2      (weight 1000)

  i.e. ``beta_j / 2 * sum_b ||.||_2`` with ``beta_j = 1000 / (H_j W_j B)``: the weight holds the
  10^3, the term holds the 1/(H_j W_j), the 1/B and the 1/2. torchdistill's ``ATLoss(mode='paper')``
  per layer is ``(1/B) sum_b ||.||_2``, i.e. ``2 * H_j * W_j`` times this layer's term.
* ``mode: code``, the official code, RepDistiller, mdistiller and torchdistill ``mode='code'``:
  ``a(F) = mean_c F_c^p`` (the mean instead of the sum cancels in the normalisation) and

      L_at = sum_j  mean_{b, hw} (q_S^j - q_T^j)^2                                      (weight 1000)

  which equals RepDistiller's ``sum(Attention()(g_s, g_t))`` exactly. Per sample the two modes differ
  only in ``1/2 ||d||_2`` (paper) against ``||d||_2^2`` (code).

Default layers: every stage end of the presets (f1..f3 of CIFAR ResNets/WRNs, as RepDistiller's
``feat[1:-1]``). Channel counts may differ; no extra parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, DistillOutput, StepContext
from kdlab.methods.connectors import align_spatial, check_pairs
from kdlab.methods.features import FeatureDistiller, FeatureParams
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint

Mode = Literal["paper", "code"]


def attention_map(feature: Tensor, p: float = 2.0, mode: Mode = "paper") -> Tensor:
    """``normalize(sum_c |F_c|^p)`` ("paper") or ``normalize(mean_c |F_c|^p)`` ("code"), B x HW, float32."""
    powered = feature.float().abs().pow(p)
    reduced = powered.sum(1) if mode == "paper" else powered.mean(1)
    return F.normalize(reduced.flatten(1), dim=1)


def at_layer_loss(student: Tensor, teacher: Tensor, p: float = 2.0, mode: Mode = "paper") -> Tensor:
    """One layer pair's term (module docstring); the larger map is average-pooled to the smaller."""
    student, teacher = align_spatial(student, teacher)
    diff = attention_map(student, p, mode) - attention_map(teacher, p, mode)
    if mode == "code":
        return diff.pow(2).mean()
    return diff.norm(dim=1).mean() / (2 * diff.shape[1])


def at_loss(students: Sequence[Tensor], teachers: Sequence[Tensor], p: float = 2.0,
            mode: Mode = "paper") -> Tensor:
    """``sum_j`` of :func:`at_layer_loss` over the layer pairs."""
    return sum(at_layer_loss(s, t, p, mode) for s, t in zip(students, teachers, strict=True))


class ATParams(FeatureParams):
    p: float = Field(2.0, gt=0, description="exponent of the attention map")
    mode: Mode = "paper"


@register_method("at")
class AttentionTransfer(FeatureDistiller):
    """CE plus the attention-map distance at every tapped layer pair."""

    terms = ("ce", "at")
    default_weights = {"ce": 1.0, "at": 1000.0}
    Params = ATParams
    soft_targets = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: ATParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        check_pairs("at", self.student_shapes, self.teacher_shapes)

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return list(preset.stages)

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        losses: dict[str, Tensor] = {}
        if step.weights["at"]:
            out = self.run_models(batch)
            logits = out.student_logits
            losses["at"] = at_loss(out.student_features, out.teacher_features, self.params.p,
                                   self.params.mode)
        else:
            logits = self.run_student(batch.inputs)
        if step.weights["ce"]:
            losses["ce"] = self.label_loss(logits, batch.label_targets)
        return DistillOutput(losses, logits)
