"""FSP: flow of solution procedure (Yim et al., CVPR 2017, "A Gift from Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning").

For consecutive tapped maps ``F1`` (C1 x H x W) and ``F2`` (C2 x H x W) the FSP (Gram) matrix is

    G[i, j] = 1/(H*W) * sum_{h,w} F1[i,h,w] * F2[j,h,w]                                   (C1 x C2)

after pooling the larger map to the smaller one's size (``pool: avg``, RepDistiller, default;
``pool: max``, torchdistill). With ``G_k`` the matrix of the k-th consecutive pair:

* ``reduction: paper`` (default), the paper's ``(1/N) sum_x sum_k lambda_k ||G_k^T - G_k^S||_F^2``
  with equal ``lambda_k = 1``: the squared Frobenius norm per sample, batch mean, summed over pairs;
* ``reduction: mean``, RepDistiller's ``FSP``: the mean over B*C1*C2 of the squared difference per
  pair, summed over pairs (the paper's value divided by C1*C2 per pair);
* ``reduction: column_norm``, torchdistill's ``FSPLoss``: ``sum_{b,j} ||G_S[b,:,j] - G_T[b,:,j]||_2 / B``.

Default weights: CE 1, FSP 0.001. The paper's sum over C1*C2 entries is C1*C2 times RepDistiller's
mean, on which RepDistiller's initialisation stage puts weight 1; 0.001 matches that for a pair of
about 1000 Gram entries (CIFAR pairs have 256 to 32768). The shipped CIFAR configs use
``reduction: mean`` with weight 1, exactly RepDistiller's.

FSP needs equal channel counts at every paired student/teacher tap (a deeper teacher of the same
widths). Otherwise building the method fails with one line, unless ``adapter: true``, which adds a
1x1 conv + BN per mismatched student tap mapping it to the teacher's channels; that is not part of
FSP and the adapters are trained by the FSP loss.

The paper trains in two stages, which are a run config with ``stages:``: an initialisation stage on
the FSP loss alone (``weights: {ce: 0, fsp: 1}``; RepDistiller: 30 epochs at the main learning rate,
training the student except its classifier, so ``freeze: [student.<classifier>]``), then ordinary
training with ``weights: {fsp: 0}`` (where the teacher is not run at all).

Default layers: the stem and every stage end of the presets, so the pairs are (input, output) of
each stage: RepDistiller's consecutive pairs of ``[f0, f1, f2, f3]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, DistillOutput, StepContext
from kdlab.methods.connectors import ConvRegressor, align_spatial, check_pairs
from kdlab.methods.features import FeatureDistiller, FeatureParams
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint

Pool = Literal["avg", "max"]
Reduction = Literal["paper", "mean", "column_norm"]


def fsp_matrix(first: Tensor, second: Tensor, pool: Pool = "avg") -> Tensor:
    """``G[b, i, j] = mean_{hw} first[b, i] * second[b, j]`` (B x C1 x C2), float32 even under autocast."""
    first, second = align_spatial(first.float(), second.float(), pool)
    with torch.autocast(first.device.type, enabled=False):
        return first.flatten(2) @ second.flatten(2).transpose(1, 2) / (first.shape[-2] * first.shape[-1])


def fsp_loss(students: Sequence[Tensor], teachers: Sequence[Tensor], pool: Pool = "avg",
             reduction: Reduction = "paper") -> Tensor:
    """Sum over consecutive map pairs of the FSP-matrix distance (module docstring)."""
    total = []
    for k in range(len(students) - 1):
        diff = fsp_matrix(students[k], students[k + 1], pool) - fsp_matrix(teachers[k], teachers[k + 1], pool)
        if reduction == "mean":
            total.append(diff.pow(2).mean())
        elif reduction == "column_norm":
            total.append(diff.norm(dim=1).sum() / diff.shape[0])
        else:
            total.append(diff.pow(2).flatten(1).sum(1).mean())
    return sum(total)


class FSPParams(FeatureParams):
    pool: Pool = "avg"
    reduction: Reduction = "paper"
    adapter: bool = False


@register_method("fsp")
class FSP(FeatureDistiller):
    """CE plus the FSP-matrix distance of consecutive tapped maps."""

    terms = ("ce", "fsp")
    default_weights = {"ce": 1.0, "fsp": 0.001}
    Params = FSPParams
    soft_targets = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: FSPParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        check_pairs("fsp", self.student_shapes, self.teacher_shapes)
        if len(self.student_shapes) < 2:
            raise ConfigError("method.params.student_layers: fsp needs at least two layers per model "
                              "(it compares consecutive pairs)")
        s_channels = [s[0] for s in self.student_shapes]
        t_channels = [t[0] for t in self.teacher_shapes]
        if s_channels != t_channels and not params.adapter:
            raise ConfigError(
                f"method.params.adapter: fsp needs equal channel counts at paired layers, got student "
                f"{s_channels} and teacher {t_channels}; set adapter: true to add 1x1 conv adapters "
                "(not part of FSP) or pick layers of equal width"
            )
        self.adapters = nn.ModuleList(
            nn.Identity() if s[0] == t[0] else ConvRegressor(s, (t[0], *s[1:]), relu=False)
            for s, t in zip(self.student_shapes, self.teacher_shapes, strict=True)
        )

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return ([preset.stem] if preset.stem is not None else []) + list(preset.stages)

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        losses: dict[str, Tensor] = {}
        if step.weights["fsp"]:
            out = self.run_models(batch)
            logits = out.student_logits
            students = [adapt(f) for adapt, f in zip(self.adapters, out.student_features, strict=True)]
            losses["fsp"] = fsp_loss(students, out.teacher_features, self.params.pool, self.params.reduction)
        else:
            logits = self.run_student(batch.inputs)
        if step.weights["ce"]:
            losses["ce"] = self.label_loss(logits, batch.label_targets)
        return DistillOutput(losses, logits)
