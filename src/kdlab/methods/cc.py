"""CC: correlation congruence (Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, ICCV 2019, "Correlation
Congruence for Knowledge Distillation").

The penultimate features of both models are mapped by trainable linear embeddings (``feat_dim``, 128) and
L2-normalized; each model's batch correlation matrix uses a Gaussian RBF kernel approximated by its
P-order Taylor expansion (exact for unit vectors up to the truncation):

    k(x, y)   = exp(-gamma ||x - y||^2) ~= exp(-2 gamma) * sum_{p=0..P} (2 gamma)^p / p! * (x . y)^p
    C_ij      = k(e_i, e_j)                          (B x B, e = normalize(W f + b))
    L_cc      = (1/B^2) * || C_T - C_S ||_F^2
    L         = w_ce * CE(z_s, y) + w_cc * L_cc

Options and the reference implementations:
- ``kernel``: ``gaussian`` (default, gamma 0.4, order P = 2 as in torchdistill's sample) or ``bilinear``
  (C = E E^T).
- ``distance``: ``squared`` (default, the paper's squared Frobenius distance) or ``frobenius``
  (torchdistill ``CCKDLoss``: the norm itself, not squared, over B^2).
- ``normalize``: L2-normalize the embeddings (default True: the Taylor form above assumes unit vectors).
  torchdistill feeds the raw linear outputs: ``normalize: false, distance: frobenius`` reproduces it.
- ``variant: repdistiller`` uses RepDistiller's ``Correlation`` instead (the reformulation the CC authors
  sent to CRD's author): with D = e_S - e_T, ``L = mean_i sum_d |D_i,d| * |D_i+1,d|`` over consecutive
  samples of the batch. RepDistiller's embeddings are not normalized, so set ``normalize: false`` with it;
  the CIFAR-100 weight 0.02 (``-b 0.02``) belongs to this variant.
Both embeddings are trainable (as in RepDistiller and torchdistill); freeze ``teacher_embed`` with a
stage's ``freeze`` list to keep the teacher's side fixed. Default weights: ce 1, cc 0.02.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillOutput, StepContext
from kdlab.methods.features import FeatureDistiller, FeatureParams
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint


def correlation_matrix(embeddings: Tensor, kernel: str = "gaussian", gamma: float = 0.4,
                       order: int = 2) -> Tensor:
    """B x B correlation: the P-order Taylor expansion of the Gaussian RBF kernel, or ``E E^T``."""
    with torch.autocast(embeddings.device.type, enabled=False):
        sim = embeddings.float() @ embeddings.float().t()
        if kernel == "bilinear":
            return sim
        series = sum((2 * gamma) ** p / math.factorial(p) * sim.pow(p) for p in range(order + 1))
        return math.exp(-2 * gamma) * series


def cc_loss(student: Tensor, teacher: Tensor, kernel: str = "gaussian", gamma: float = 0.4, order: int = 2,
            distance: str = "squared") -> Tensor:
    """``||C_T - C_S||_F^2 / B^2`` (``distance='frobenius'``: the norm, not squared, over B^2)."""
    with torch.autocast(student.device.type, enabled=False):
        diff = correlation_matrix(teacher, kernel, gamma, order) - correlation_matrix(student, kernel, gamma,
                                                                                      order)
        total = torch.linalg.vector_norm(diff) if distance == "frobenius" else diff.pow(2).sum()
        return total / student.shape[0] ** 2


def cc_repdistiller_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RepDistiller's ``Correlation``: ``mean_i sum_d |D_i,d| |D_i+1,d|`` with ``D = e_S - e_T``."""
    delta = (student.float() - teacher.float()).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


class CCParams(FeatureParams):
    model_config = ConfigDict(extra="forbid")
    feat_dim: int = Field(128, gt=0)
    variant: Literal["correlation", "repdistiller"] = "correlation"
    kernel: Literal["gaussian", "bilinear"] = "gaussian"
    gamma: float = Field(0.4, gt=0)
    order: int = Field(2, ge=0)
    distance: Literal["squared", "frobenius"] = "squared"
    normalize: bool = True


@register_method("cc")
class CorrelationCongruence(FeatureDistiller):
    """CE plus the correlation-congruence loss between linear embeddings of one layer per model."""

    terms = ("ce", "cc")
    default_weights = {"ce": 1.0, "cc": 0.02}
    Params = CCParams
    soft_targets = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if len(self.student_shapes) != 1 or len(self.teacher_shapes) != 1:
            raise ConfigError("method.params.student_layers: cc embeds one layer per model; name exactly "
                              "one student layer and one teacher layer")
        dim = self.params.feat_dim
        self.student_embed = nn.Linear(self.student_shapes[0].numel(), dim)
        self.teacher_embed = nn.Linear(self.teacher_shapes[0].numel(), dim)

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return [preset.embedding]

    def _embed(self, layer: nn.Linear, features: Tensor) -> Tensor:
        embedded = layer(features.flatten(1)).float()
        return F.normalize(embedded, dim=1) if self.params.normalize else embedded

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        out = self.run_models(batch)
        p = self.params
        student = self._embed(self.student_embed, out.student_features[0])
        teacher = self._embed(self.teacher_embed, out.teacher_features[0])
        if p.variant == "repdistiller":
            cc = cc_repdistiller_loss(student, teacher)
        else:
            cc = cc_loss(student, teacher, p.kernel, p.gamma, p.order, p.distance)
        return DistillOutput({"ce": self.label_loss(out.student_logits, batch.label_targets), "cc": cc},
                             out.student_logits)
