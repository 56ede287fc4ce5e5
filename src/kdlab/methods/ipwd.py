"""IPWD: inverse probability weighting distillation (Niu, Chen, Zhou & Zhang, NeurIPS 2022, "Respecting
Transfer Gap in Knowledge Distillation").

The teacher's soft labels form a "machine domain" that is not balanced like the human-labelled
transfer set; IPWD weights each sample's distillation term by the inverse of its estimated propensity
of belonging to the machine domain. The propensity compares two heads on the student's penultimate
feature h (``detach_features``: the extra head sees h.detach(), so estimation does not reshape the
features): the main head z_kd (trained with the KD objective) and one extra linear head z_cls trained
with plain CE on the labels (loss term ``aux``). With N the per-sample z-score of the logits over the
classes (``logit_norm``):

    H_kd = CE(softmax(N(z_kd)), y),  H_cls = CE(softmax(N(z_cls)), y)                  (per sample)
    w = 1 + H_kd / (H_cls + eps)     (orientation "kd_over_cls", default)
    w = 1 + H_cls / (H_kd + eps)     (orientation "cls_over_kd", the only textual source's formula)
    w <- min(w, w_max);  w <- w / mean_batch(w) if normalize_weights;  w = 1 before start_epoch

Two-stage (``ipwd``, teacher -> student), with the temperature-T KD of Hinton et al.:

    L = w_ce * CE(z_s, y) + w_kd * mean_i[ w_i * T^2 KL(p_t,i^T || p_s,i^T) ] + w_aux * CE(z_cls, y)

One-stage self-distillation (``ipwd_self``) on PS-KD (Kim et al., ICCV 2021): the "teacher" is the
student's own softmax from the previous epoch, stored per training sample (p_prev; the one-hot label
before a sample's first visit), alpha_t = alpha_T * (e + 1) / E at 0-based epoch e of E (``alpha``
is alpha_T, 0.8; ``epochs`` is E), and

    L = w_ce * mean_i[(1 - alpha_t) CE(z_i, y_i)] + w_sd * mean_i[alpha_t w_i H(p_prev,i, softmax(z_i))]
        + w_aux * CE(z_cls, y)

which is PS-KD exactly when every w_i = 1.

What the paper's text we could read leaves open, and what is chosen here (docs/methods.md, `ipwd`):
which head is the extra one (the main head is z_kd; ``kd_head: aux`` adds a separate KD-only head
instead), the normalization N (z-score), eps 1e-7, the clip w_max 10, no batch normalization of the
weights, the weight detached (``stop_gradient``), only the distillation term weighted, and the
orientation, which a constructed imbalanced-teacher experiment decided (``kd_over_cls``: samples of
classes the teacher under-predicts get the larger weights; the reported formula does the opposite).

At each evaluation the distiller reports (``diagnostics``) the mean and max of the estimated weights
since the previous evaluation, the fraction clipped, and the mean weight over the samples of the
"head" and "tail" class groups: the ``group_fraction`` of classes with the largest and the smallest
summed teacher probability over those samples (IPWD's Table 1 ranking; 25 of 100 on CIFAR-100).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from kdlab.core.distributed import all_gather_cat, all_reduce_
from kdlab.core.errors import ConfigError
from kdlab.core.registry import UnknownNameError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, Distiller, DistillOutput, StepContext
from kdlab.methods.divergence import kl_divergence
from kdlab.methods.registry import register_method
from kdlab.models import FeatureTaps, TapPoint, probe_forward, stage_preset
from kdlab.models.errors import ModelError

Orientation = Literal["kd_over_cls", "cls_over_kd"]


def normalize_logits(logits: Tensor, mode: Literal["zscore", "none"] = "zscore") -> Tensor:
    """Per-sample standardization over the classes, ``(z - mean(z)) / (std(z) + 1e-7)``, or ``z``."""
    if mode == "none":
        return logits
    centered = logits - logits.mean(dim=1, keepdim=True)
    return centered / (centered.pow(2).mean(dim=1, keepdim=True).sqrt() + 1e-7)


def ipw_weights(kd_logits: Tensor, cls_logits: Tensor, targets: Tensor, *,
                orientation: Orientation = "kd_over_cls", logit_norm: Literal["zscore", "none"] = "zscore",
                eps: float = 1e-7, w_max: float | None = 10.0, normalize: bool = False) -> Tensor:
    """Per-sample inverse propensity weights ``1 + H_a / (H_b + eps)`` (module docstring), in float32.

    Differentiable in both logits; callers detach them for the stop-gradient estimator.
    """
    h_kd = F.cross_entropy(normalize_logits(kd_logits.float(), logit_norm), targets, reduction="none")
    h_cls = F.cross_entropy(normalize_logits(cls_logits.float(), logit_norm), targets, reduction="none")
    ratio = h_kd / (h_cls + eps) if orientation == "kd_over_cls" else h_cls / (h_kd + eps)
    weights = 1.0 + ratio
    if w_max is not None:
        weights = weights.clamp(max=w_max)
    if normalize:
        weights = weights / weights.mean()
    return weights


def per_sample_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` per sample, in float32."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return kl_divergence(log_p_t, log_p_s, dim=1) * temperature**2


def pskd_alpha(progress: float, epochs: int, alpha_max: float) -> float:
    """PS-KD's ``alpha_T * (e + 1) / E`` at 0-based epoch ``e = floor(progress)``, at most alpha_T."""
    return alpha_max * min((math.floor(progress) + 1) / epochs, 1.0)


class WeightStats:
    """Sums of the weights per class and the teacher's probability mass per class, since the last
    :meth:`compute`; reduced across processes when computed."""

    def __init__(self, num_classes: int, group_fraction: float, w_max: float | None) -> None:
        self.num_classes = num_classes
        self.group = max(1, round(num_classes * group_fraction))
        self.w_max = w_max
        self.sums: Tensor | None = None
        self.peak: Tensor | None = None

    @torch.no_grad()
    def update(self, weights: Tensor, targets: Tensor, teacher_probs: Tensor) -> None:
        c = self.num_classes
        if self.sums is None:
            self.sums = torch.zeros(4, c, dtype=torch.float64, device=weights.device)
            self.peak = torch.zeros((), dtype=torch.float64, device=weights.device)
        w = weights.detach().double()
        self.sums[0].index_add_(0, targets, w)
        self.sums[1].index_add_(0, targets, torch.ones_like(w))
        clipped = (w >= self.w_max) if self.w_max is not None else torch.zeros_like(w, dtype=torch.bool)
        self.sums[2].index_add_(0, targets, clipped.double())
        self.sums[3] += teacher_probs.detach().double().sum(dim=0)
        self.peak = torch.maximum(self.peak, w.max())

    def compute(self) -> dict[str, float]:
        """Mean, max, clipped fraction, and head/tail-group means of the weights; then reset."""
        if self.sums is None:
            return {}
        sums, peak = self.sums, self.peak
        all_reduce_(sums)
        all_reduce_(peak, "max")
        self.sums = self.peak = None
        weight, count, clipped, mass = sums
        ranked = mass.argsort(descending=True)

        def group_mean(classes: Tensor) -> float:
            return float(weight[classes].sum() / count[classes].sum().clamp(min=1))

        return {
            "ipw_mean": float(weight.sum() / count.sum()),
            "ipw_max": float(peak),
            "ipw_clipped": float(clipped.sum() / count.sum()),
            "ipw_head": group_mean(ranked[: self.group]),
            "ipw_tail": group_mean(ranked[-self.group:]),
        }


class IPWParams(BaseModel):
    """The propensity estimator and weighting, shared by both settings."""

    model_config = ConfigDict(extra="forbid")
    orientation: Orientation = "kd_over_cls"
    logit_norm: Literal["zscore", "none"] = "zscore"
    eps: float = Field(1e-7, gt=0)
    w_max: float | None = Field(10.0, gt=1, description="clip of the weights (null: none)")
    normalize_weights: bool = Field(False, description="divide the weights by their batch mean")
    stop_gradient: bool = Field(True, description="no gradient through the weights")
    detach_features: bool = Field(True, description="the extra head sees h.detach()")
    start_epoch: float = Field(0.0, ge=0, description="weights are 1 before this epoch of the stage")
    group_fraction: float = Field(0.25, gt=0, le=0.5, description="class share of the head/tail groups")
    embedding_layer: str | None = Field(None, description="module whose input is h (default: the "
                                                          "preset's classifier)")


class _IPWBase(Distiller):
    """The extra CE head on the student's penultimate feature, the weights and their statistics."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: IPWParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        if params.embedding_layer is not None:
            tap = TapPoint(params.embedding_layer, "input")
        else:
            try:
                tap = stage_preset(context.student_name, student).embedding
            except (UnknownNameError, ModelError) as exc:
                raise ConfigError(f"method.params.embedding_layer: student {context.student_name!r} has "
                                  f"no stage preset ({exc}); name its classifier by module path") from None
        try:
            self.embedding_taps = FeatureTaps(student, [tap])
        except ModelError as exc:
            raise ConfigError(f"method.params.embedding_layer: {exc}") from None
        dim = self._embedding_dim(context)
        self.cls_head = nn.Linear(dim, context.num_classes)
        self.stats = WeightStats(context.num_classes, params.group_fraction, params.w_max)

    def _embedding_dim(self, context: DistillContext) -> int:
        probe_forward(self.student, context.input_shape)
        dim = self.embedding_taps.features[0][0].numel()
        self.embedding_taps.clear()
        return dim

    def run_student(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """The student's logits and its penultimate feature (flattened)."""
        logits = self.student_forward(inputs)
        features = self.embedding_taps.features[0].flatten(1)
        self.embedding_taps.clear()
        return logits, features

    def head_input(self, features: Tensor) -> Tensor:
        return features.detach() if self.params.detach_features else features

    def weights_for(self, kd_logits: Tensor, cls_logits: Tensor, targets: Tensor,
                    teacher_probs: Tensor, step: StepContext) -> Tensor:
        """The applied weights: estimated (detached under stop_gradient), or ones before start_epoch."""
        p: IPWParams = self.params
        if p.stop_gradient:
            kd_logits, cls_logits = kd_logits.detach(), cls_logits.detach()
        weights = ipw_weights(kd_logits, cls_logits, targets, orientation=p.orientation,
                              logit_norm=p.logit_norm, eps=p.eps, w_max=p.w_max,
                              normalize=p.normalize_weights)
        if self.training:
            self.stats.update(weights, targets, teacher_probs)
        if step.stage_progress < p.start_epoch:
            return torch.ones_like(weights).detach()
        return weights

    def diagnostics(self) -> dict[str, float]:
        return self.stats.compute()


class IPWDParams(IPWParams):
    temperature: float = Field(4.0, gt=0)
    kd_head: Literal["main", "aux"] = Field("main", description="z_kd: the main head, or an extra "
                                                                  "KD-only head (term aux_kd)")


@register_method("ipwd")
class IPWD(_IPWBase):
    """Teacher -> student KD with each sample's KD term weighted by its inverse propensity."""

    terms = ("ce", "kd", "aux", "aux_kd")
    default_weights = {"ce": 0.1, "kd": 0.9, "aux": 1.0, "aux_kd": 1.0}
    Params = IPWDParams
    teacher_cache = "logits"
    composable = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: IPWDParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        if params.kd_head == "aux":
            self.kd_head = nn.Linear(self.cls_head.in_features, context.num_classes)

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        p: IPWDParams = self.params
        teacher_logits = self.batch_teacher_logits(batch)
        logits, features = self.run_student(batch.inputs)
        head_input = self.head_input(features)
        cls_logits = self.cls_head(head_input)
        losses = {"ce": self.label_loss(logits, batch.targets),
                  "aux": self.label_loss(cls_logits, batch.targets)}
        kd_logits = logits
        if p.kd_head == "aux":
            kd_logits = self.kd_head(head_input)
            losses["aux_kd"] = per_sample_kd(kd_logits, teacher_logits, p.temperature).mean()
        teacher_probs = F.softmax(teacher_logits.float(), dim=1)
        weights = self.weights_for(kd_logits, cls_logits, batch.targets, teacher_probs, step)
        losses["kd"] = (weights * per_sample_kd(logits, teacher_logits, p.temperature)).mean()
        return DistillOutput(losses, logits)


class IPWDSelfParams(IPWParams):
    epochs: int = Field(gt=0, description="the stage's length E in epochs (PS-KD's alpha ramp)")
    alpha: float = Field(0.8, ge=0, le=1, description="PS-KD's alpha_T, the ramp's final value")


@register_method("ipwd_self")
class IPWDSelf(_IPWBase):
    """PS-KD self-distillation with each sample's self-distillation term inverse-propensity weighted.

    The previous-epoch predictions are an N x C float32 buffer (20 MB for CIFAR-100), in checkpoints
    and kept identical across DDP processes (every process applies every process's update).
    """

    terms = ("ce", "sd", "aux")
    default_weights = {"ce": 1.0, "sd": 1.0, "aux": 1.0}
    needs_teacher = False
    Params = IPWDSelfParams
    keys_samples = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: IPWDSelfParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, None, params, context, **norms)
        n, c = context.num_train_samples, context.num_classes
        self.register_buffer("predictions", torch.zeros(n, c))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["predictions", "seen"])

    def previous(self, indices: Tensor, targets: Tensor) -> Tensor:
        """Each sample's stored prediction, or its one-hot label before its first visit."""
        one_hot = F.one_hot(targets, self.context.num_classes).float()
        return torch.where(self.seen[indices, None], self.predictions[indices], one_hot)

    @torch.no_grad()
    def remember(self, indices: Tensor, probs: Tensor) -> None:
        indices, probs = all_gather_cat(indices), all_gather_cat(probs)
        self.predictions.index_copy_(0, indices, probs)
        self.seen[indices] = True

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        p: IPWDSelfParams = self.params
        alpha = pskd_alpha(step.stage_progress, p.epochs, p.alpha)
        logits, features = self.run_student(batch.inputs)
        cls_logits = self.cls_head(self.head_input(features))
        targets = self.previous(batch.indices, batch.targets)
        log_probs = F.log_softmax(logits.float(), dim=1)
        weights = self.weights_for(logits, cls_logits, batch.targets, targets, step)
        losses = {
            "ce": (1 - alpha) * self.label_loss(logits, batch.targets),
            "sd": alpha * (weights * -(targets * log_probs).sum(dim=1)).mean(),
            "aux": self.label_loss(cls_logits, batch.targets),
        }
        if self.training:
            self.remember(batch.indices, log_probs.detach().exp())
        return DistillOutput(losses, logits)
