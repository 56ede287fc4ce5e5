"""AB: activation-boundary transfer (Heo et al., AAAI 2019, "Knowledge Transfer via Distillation of
Activation Boundaries Formed by Hidden Neurons").

Works on pre-activation features (the input of a layer's ReLU). A teacher neuron is active when its
pre-activation ``t > 0`` (``rho = 1[t > 0]``); the student's pre-activation goes through a connector
``r`` and is pushed to the same side of zero by at least the margin ``mu``. The paper's alternative
(differentiable) loss, summed over a sample's neurons and averaged over the batch, per layer i:

    L_i = (1/B) * sum_b sum_neurons [ rho * ReLU(mu - r(s))^2 + (1 - rho) * ReLU(mu + r(s))^2 ]

    L_ab = sum_i w_i * L_i,   w_i = 2^(i - n + 1)  (the deepest of n layers gets 1, the one before 1/2, ...)

The layer weights are the official code's (``bhheo/AB_distillation``) and RepDistiller's
(``layer_weights`` overrides them). Both also multiply the sum by 3/1000: that constant is the
default weight of the ``ab`` term here, so ``0.003 * L_ab`` equals RepDistiller's
``sum(ABLoss(n)(g_s, g_t))`` exactly.

The connector of each layer is RepDistiller's ``Connector``: identity when channels and height
match, otherwise :class:`~kdlab.methods.connectors.ConvRegressor` without ReLU (conv + BN).

The paper's two stages are a run config with ``stages:``: an initialisation stage on the AB loss
alone (``weights: {ce: 0}``; RepDistiller: 30 epochs at the main learning rate, training the
connectors and the student except its classifier: ``freeze: [student.<classifier>]``), then
classification training with ``weights: {ab: 0}`` (the teacher is then not run at all).

Default layers: the ``preact_stages`` of the presets (RepDistiller's ``preact`` f1..f3); models
without a pre-activation preset need ``student_layers``/``teacher_layers`` (``"path:input"`` taps a
module's input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, DistillOutput, StepContext
from kdlab.methods.connectors import ConvRegressor, align_spatial, check_pairs
from kdlab.methods.features import FeatureDistiller, FeatureParams
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint


def ab_layer_loss(student: Tensor, teacher: Tensor, margin: float = 1.0) -> Tensor:
    """``(1/B) sum [rho * ReLU(mu - s)^2 + (1 - rho) * ReLU(mu + s)^2]`` with ``rho = 1[t > 0]``, float32.

    ``student`` is the connector output, already of the teacher's shape.
    """
    student = student.float()
    active = teacher > 0
    hinge = torch.where(active, F.relu(margin - student), F.relu(margin + student))
    return hinge.pow(2).flatten(1).sum(1).mean()


def default_layer_weights(count: int) -> list[float]:
    """``2^(i - n + 1)`` for i = 0..n-1: the deepest layer gets 1, each shallower one half the next."""
    return [2.0 ** (i - count + 1) for i in range(count)]


def ab_loss(students: Sequence[Tensor], teachers: Sequence[Tensor], weights: Sequence[float],
            margin: float = 1.0) -> Tensor:
    """``sum_i w_i * L_i`` over the layer pairs (student maps already through the connectors)."""
    return sum(w * ab_layer_loss(s, t, margin)
               for w, s, t in zip(weights, students, teachers, strict=True))


class ABParams(FeatureParams):
    margin: float = Field(1.0, ge=0)
    layer_weights: list[float] | None = Field(None, description="per layer, shallowest first")


@register_method("ab")
class ActivationBoundaries(FeatureDistiller):
    """CE plus the activation-boundary hinge between connector outputs and teacher pre-activations."""

    terms = ("ce", "ab")
    default_weights = {"ce": 1.0, "ab": 0.003}
    Params = ABParams
    soft_targets = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: ABParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        check_pairs("ab", self.student_shapes, self.teacher_shapes)
        count = len(self.student_shapes)
        if params.layer_weights is not None and len(params.layer_weights) != count:
            raise ConfigError(f"method.params.layer_weights: ab needs one weight per layer pair ({count}), "
                              f"got {len(params.layer_weights)}")
        self.layer_weights = params.layer_weights or default_layer_weights(count)
        self.connectors = nn.ModuleList(
            nn.Identity() if tuple(s[:2]) == tuple(t[:2]) else ConvRegressor(s, t, relu=False)
            for s, t in zip(self.student_shapes, self.teacher_shapes, strict=True)
        )

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        if preset.preact_stages is None:
            raise ConfigError(f"method.params.{role}_layers: ab needs pre-activation features and the "
                              f"{role} has no pre-activation preset; name them ('path:input' taps a "
                              "module's input)")
        return list(preset.preact_stages)

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        losses: dict[str, Tensor] = {}
        if step.weights["ab"]:
            out = self.run_models(batch)
            logits = out.student_logits
            pairs = [align_spatial(connect(s), t) for connect, s, t in
                     zip(self.connectors, out.student_features, out.teacher_features, strict=True)]
            losses["ab"] = ab_loss([s for s, _ in pairs], [t for _, t in pairs], self.layer_weights,
                                   self.params.margin)
        else:
            logits = self.run_student(batch.inputs)
        if step.weights["ce"]:
            losses["ce"] = self.label_loss(logits, batch.label_targets)
        return DistillOutput(losses, logits)
