"""VID: variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019, "Variational
Information Distillation for Knowledge Transfer").

Per paired layer, the teacher's feature map t is modelled as a Gaussian whose mean mu(s) a regressor
predicts from the student's map s and whose variance is learned per channel (heteroscedastic over
channels, shared over positions and samples):

    mu(s)       = conv1x1(ReLU(conv1x1(ReLU(conv1x1(s)))))        (no biases; mid width = teacher channels)
    sigma_c^2   = softplus(alpha_c) + eps,   eps = 1e-5,   alpha_c initialized so that sigma_c^2 = 5
    L_vid       = sum_layers mean_{b,c,h,w} 1/2 * ( (t - mu(s))^2 / sigma_c^2 + log sigma_c^2 )
    L           = w_ce * CE(z_s, y) + w_vid * L_vid

This is the authors' code as used by RepDistiller (``VIDLoss``), mdistiller and torchdistill: the negative
log-likelihood without the constant log(2 pi)/2, averaged over all elements. When the resolutions differ,
the larger map is adaptive-average-pooled to the smaller one before the regressor (RepDistiller).
Default layers: the last three stage ends of each model (RepDistiller's ``feat[1:-1]``, i.e. f1..f3 for
the ResNet/WRN/ShuffleNet families and block1/2/4 for VGG). Default weights ce 1, vid 1 (RepDistiller).
The regressors and the alphas are trained with the student.
"""

from __future__ import annotations

import math

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

EPS = 1e-5


def vid_loss(mean: Tensor, variance: Tensor, target: Tensor) -> Tensor:
    """``mean(0.5 * ((target - mean)^2 / variance + log variance))``; ``variance`` broadcasts per channel."""
    mean, variance, target = mean.float(), variance.float().view(1, -1, 1, 1), target.float()
    return (0.5 * ((target - mean).pow(2) / variance + variance.log())).mean()


def match_resolution(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two maps to the other's spatial size."""
    if student.shape[-2:] == teacher.shape[-2:]:
        return student, teacher
    if student.shape[-2] * student.shape[-1] > teacher.shape[-2] * teacher.shape[-1]:
        return F.adaptive_avg_pool2d(student, teacher.shape[-2:]), teacher
    return student, F.adaptive_avg_pool2d(teacher, student.shape[-2:])


class VariationalRegressor(nn.Module):
    """Predicted mean (three 1x1 convs) and learned per-channel variance of one teacher map."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_variance: float) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False),
        )
        alpha = math.log(math.expm1(init_variance - EPS))
        self.alpha = nn.Parameter(torch.full((out_channels,), alpha))

    def variance(self) -> Tensor:
        return F.softplus(self.alpha.float()) + EPS

    def forward(self, student: Tensor) -> Tensor:
        return self.mean(student)


class VIDParams(FeatureParams):
    model_config = ConfigDict(extra="forbid")
    init_variance: float = Field(5.0, gt=EPS)
    mid_channels: int | None = Field(None, gt=0)


@register_method("vid")
class VariationalInformationDistillation(FeatureDistiller):
    """CE plus the VID negative log-likelihood of each teacher map given the paired student map."""

    terms = ("ce", "vid")
    default_weights = {"ce": 1.0, "vid": 1.0}
    Params = VIDParams
    soft_targets = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        pairs = list(zip(self.student_shapes, self.teacher_shapes, strict=False))
        if len(self.student_shapes) != len(self.teacher_shapes):
            raise ConfigError(
                f"method.params.student_layers: vid pairs layers one to one, but got "
                f"{len(self.student_shapes)} student and {len(self.teacher_shapes)} teacher layers")
        if any(len(s) != 3 or len(t) != 3 for s, t in pairs):
            raise ConfigError("method.params.student_layers: vid needs C x H x W feature maps on both sides")
        self.regressors = nn.ModuleList(
            VariationalRegressor(s[0], self.params.mid_channels or t[0], t[0], self.params.init_variance)
            for s, t in pairs
        )

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return list(preset.stages[-3:])

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        out = self.run_models(batch)
        vid = 0.0
        for regressor, s, t in zip(self.regressors, out.student_features, out.teacher_features, strict=True):
            s, t = match_resolution(s, t)
            vid = vid + vid_loss(regressor(s), regressor.variance(), t)
        return DistillOutput({"ce": self.label_loss(out.student_logits, batch.label_targets), "vid": vid},
                             out.student_logits)
