"""FitNet: hint learning (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets").

A regressor ``r`` maps the student's guided layer ``v_g`` to the shape of the teacher's hint layer
``u_h``; the hint loss is the paper's

    L_hint = (1/B) * sum_b  1/2 * || u_h(x_b) - r(v_g(x_b)) ||_2^2          (reduction "paper", default)

or RepDistiller's / mdistiller's ``nn.MSELoss``, the mean over all B*C*H*W elements (reduction
"mean"; equal to the paper's value times 2 / (C*H*W)). The loss terms are

    L = w_ce * CE(z_s, y) + w_kd * L_kd(T) + w_hint * L_hint

The paper trains in two stages: (1) the student up to the guided layer plus the regressor on
``L_hint`` alone, (2) the whole student with KD. That is a run config with ``stages:`` (stage 1:
``weights: {ce: 0, kd: 0}`` and ``train_only`` the student's modules up to the guided layer
plus ``connector``; stage 2: ``weights: {hint: 0, ...}``, ``freeze: [connector]``). RepDistiller's
one-stage joint training (CE 1, hint 100 with ``reduction: mean``, ``relu: true``) is a plain config.

Default weights: CE 1, KD 0, hint 0.01. With the paper's reduction the hint's gradient per element is
``w_hint * diff / B``; RepDistiller's 100 on the element mean gives ``200 * diff / (B*C*H*W)``, so
0.01 is within a factor 2.5 of RepDistiller's strength for hints of 8k-32k elements (CIFAR stage-2
maps). A weight of 1 with the paper's reduction diverges at the usual learning rates.

The regressor is :class:`~kdlab.methods.connectors.ConvRegressor`. Its final ReLU (RepDistiller's
default) is off by default here: a hint taken from a pre-activation network (WRN) can be negative,
which a ReLU output can never match.

Default layers: the middle stage end of each model's preset (``stages[len // 2]``: the output of
stage 2 of CIFAR ResNets/WRNs, RepDistiller's ``--hint_layer 2``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, DistillOutput, StepContext
from kdlab.methods.connectors import ConvRegressor, align_spatial, check_pairs
from kdlab.methods.features import FeatureDistiller, FeatureParams
from kdlab.methods.kd import kd_loss
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint


def hint_loss(regressed: Tensor, hint: Tensor, reduction: Literal["paper", "mean"] = "paper") -> Tensor:
    """``(1/B) sum_b 1/2 ||hint_b - regressed_b||^2`` ("paper") or the element mean of the squared
    difference ("mean", RepDistiller's ``HintLoss``), in float32."""
    diff = regressed.float() - hint.float()
    if reduction == "mean":
        return diff.pow(2).mean()
    return 0.5 * diff.pow(2).flatten(1).sum(1).mean()


class FitNetParams(FeatureParams):
    relu: bool = Field(False, description="final ReLU in the regressor (RepDistiller: true)")
    reduction: Literal["paper", "mean"] = "paper"
    temperature: float = Field(4.0, gt=0, description="temperature of the kd term")


@register_method("fitnet")
class FitNet(FeatureDistiller):
    """CE, optional KD, and the hint regression from the guided layer to the hint layer."""

    terms = ("ce", "kd", "hint")
    default_weights = {"ce": 1.0, "kd": 0.0, "hint": 0.01}
    Params = FitNetParams
    soft_targets = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: FitNetParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        check_pairs("fitnet", self.student_shapes, self.teacher_shapes, count=1)
        self.connector = ConvRegressor(self.student_shapes[0], self.teacher_shapes[0], relu=params.relu)

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return [preset.stages[len(preset.stages) // 2]]

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        w = step.weights
        losses: dict[str, Tensor] = {}
        if not (w["kd"] or w["hint"]):
            logits = self.run_student(batch.inputs)
        else:
            out = self.run_models(batch)
            logits = out.student_logits
            if w["kd"]:
                losses["kd"] = kd_loss(logits, out.teacher_logits, self.params.temperature)
            if w["hint"]:
                regressed, hint = align_spatial(self.connector(out.student_features[0]),
                                                out.teacher_features[0])
                losses["hint"] = hint_loss(regressed, hint, self.params.reduction)
        if w["ce"]:
            losses["ce"] = self.label_loss(logits, batch.label_targets)
        return DistillOutput(losses, logits)
