"""FT: factor transfer (Kim, Park & Kwak, NeurIPS 2018, "Paraphrasing Complex Network: Network
Compression via Factor Transfer").

A paraphraser ``P`` (a convolutional autoencoder with ``round(k * C_t)`` code channels, k = ``rate``)
is trained to reconstruct the teacher's last-stage map ``x``; its encoder output is the teacher factor
``F_T``. A translator on the student's last-stage map gives the student factor ``F_S`` with as many
channels. The terms are

    reconstruction = mean (P(x) - x)^2        (``reconstruction: l2``, the paper's L2, as RepDistiller's
                                                MSELoss; ``l1``: mean |P(x) - x|, the authors' code)
    ft             = mean_{b, d} | F_S,b / ||F_S,b||_2 - F_T,b / ||F_T,b||_2 |        (``mode: paper``)

with the factors flattened per sample. ``mode: paper`` is the paper's ``||.||_p`` with p = 1 as the
authors' code computes it (``nn.L1Loss`` over B*D elements, D = C*H*W of the factor: the per-sample
norm divided by D), with their CIFAR weight beta = 500. ``mode: code`` is RepDistiller's
``FactorTransfer``: the L1 mean between AT-style maps of the factors,
``normalize(mean_c F_c^2)`` per sample (its weight 200); it equals RepDistiller's value exactly.
The larger factor is average-pooled to the smaller one's size first (RepDistiller).

The teacher factor is always detached: the paraphraser learns only from the reconstruction term.
The paper's schedule is a run config with ``stages:``: a paraphraser stage (``train_only:
[paraphraser]``, ``weights: {ce: 0, ft: 0, reconstruction: 1}``; RepDistiller: 30 epochs at lr 0.01
for CIFAR ResNet/WRN students), then the student stage (``freeze: [paraphraser]``,
``weights: {reconstruction: 0}``). Terms of weight 0 are not computed.

Modules: the paraphraser as in both references (3x3 convs C->C->kC->kC, then transposed 3x3 convs
kC->kC->C->C, LeakyReLU(0.1) after each, no BN); the translator 3x3 convs C_s->C_s->kC_t->kC_t with
LeakyReLU(0.1), with BN after each conv when ``translator_bn`` is set (RepDistiller) and without
(the authors' code, default). Default layers: the last stage end of each preset (RepDistiller's f3).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import torch
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


def _conv_stack(channels: list[int], conv: type[nn.Module], batchnorm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in pairwise(channels):
        layers.append(conv(c_in, c_out, kernel_size=3, stride=1, padding=1))
        if batchnorm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Autoencoder on the teacher map: ``encoder`` gives the factor, ``decoder`` the reconstruction."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        self.encoder = _conv_stack([channels, channels, factor_channels, factor_channels], nn.Conv2d, False)
        self.decoder = _conv_stack([factor_channels, factor_channels, channels, channels],
                                   nn.ConvTranspose2d, False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


def translator(channels: int, factor_channels: int, batchnorm: bool) -> nn.Sequential:
    """The student's factor extractor: three 3x3 convs to ``factor_channels``."""
    return _conv_stack([channels, channels, factor_channels, factor_channels], nn.Conv2d, batchnorm)


def factor_transfer_loss(student_factor: Tensor, teacher_factor: Tensor, mode: Mode = "paper") -> Tensor:
    """L1 mean between normalised factors: flattened (paper) or AT-style maps (code), float32."""
    student, teacher = align_spatial(student_factor.float(), teacher_factor.float())
    if mode == "code":
        student, teacher = student.pow(2).mean(1), teacher.pow(2).mean(1)
    return (F.normalize(student.flatten(1), dim=1) - F.normalize(teacher.flatten(1), dim=1)).abs().mean()


def reconstruction_loss(reconstruction: Tensor, target: Tensor, kind: Literal["l2", "l1"] = "l2") -> Tensor:
    """Element mean of the squared (l2) or absolute (l1) reconstruction error, float32."""
    diff = reconstruction.float() - target.float()
    return diff.pow(2).mean() if kind == "l2" else diff.abs().mean()


class FTParams(FeatureParams):
    rate: float = Field(0.5, gt=0, description="paraphrase rate k: factor channels = round(k * C_t)")
    mode: Mode = "paper"
    reconstruction: Literal["l2", "l1"] = "l2"
    translator_bn: bool = False


@register_method("ft")
class FactorTransfer(FeatureDistiller):
    """CE, the factor-transfer L1 between translator and paraphraser factors, and the paraphraser's
    reconstruction loss."""

    terms = ("ce", "ft", "reconstruction")
    default_weights = {"ce": 1.0, "ft": 500.0, "reconstruction": 1.0}
    Params = FTParams
    soft_targets = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: FTParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        check_pairs("ft", self.student_shapes, self.teacher_shapes, count=1)
        t_channels, s_channels = self.teacher_shapes[0][0], self.student_shapes[0][0]
        factor_channels = max(1, round(t_channels * params.rate))
        self.paraphraser = Paraphraser(t_channels, factor_channels)
        self.translator = translator(s_channels, factor_channels, params.translator_bn)

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return [preset.stages[-1]]

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        w = step.weights
        losses: dict[str, Tensor] = {}
        if w["ft"] or w["reconstruction"]:
            out = self.run_models(batch)
            logits, feature = out.student_logits, out.teacher_features[0]
            if w["reconstruction"]:
                teacher_factor, reconstruction = self.paraphraser(feature)
                losses["reconstruction"] = reconstruction_loss(reconstruction, feature,
                                                               self.params.reconstruction)
            else:
                with torch.no_grad():
                    teacher_factor = self.paraphraser.encoder(feature)
            if w["ft"]:
                student_factor = self.translator(out.student_features[0])
                losses["ft"] = factor_transfer_loss(student_factor, teacher_factor.detach(), self.params.mode)
        else:
            logits = self.run_student(batch.inputs)
        if w["ce"]:
            losses["ce"] = self.label_loss(logits, batch.label_targets)
        return DistillOutput(losses, logits)
