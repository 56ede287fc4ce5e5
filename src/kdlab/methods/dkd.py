"""DKD: decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022, "Decoupled Knowledge
Distillation").

The KD loss is split at the target class y. With p = softmax(z / T):

    b        = [p_y, 1 - p_y]                                     (binary: target vs all others)
    p_hat    = softmax over the non-target classes of z / T       (target class removed)
    TCKD     = T^2 * (1/B) * sum_i KL( b_t,i || b_s,i )
    NCKD     = T^2 * (1/B) * sum_i KL( p_hat_t,i || p_hat_s,i )
    L_dkd    = min(e / warmup_epochs, 1) * (alpha * TCKD + beta * NCKD)
    L        = w_ce * CE(z_s, y) + w_dkd * L_dkd

This is mdistiller's ``DKD.py`` convention (T^2 on both parts, KL summed over classes and averaged over
the batch). mdistiller removes the target class by subtracting 1000 from its logit; here it is dropped
from the softmax outright (the same value in float32), and ``log(1 - p_y)`` is computed as a log-sum-exp
over the non-target logits instead of ``log`` of a sum of probabilities, which is stabler.

Warm-up: mdistiller multiplies the DKD term by ``min(epoch / 20, 1)`` with its 1-based epoch counter, so
the first epoch already has factor 1/20. Here e = floor(progress) + 1, with ``progress`` the epochs done
in the current stage, which gives exactly mdistiller's factor at every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdlab.data.batch import Batch
from kdlab.methods.base import Distiller, DistillOutput, StepContext
from kdlab.methods.divergence import kl_divergence
from kdlab.methods.registry import register_method


def _binary_log_probs(logits: Tensor, target_mask: Tensor) -> Tensor:
    """``log [p_y, 1 - p_y]`` of ``softmax(logits)``, shape (B, 2)."""
    log_all = torch.logsumexp(logits, dim=1)
    log_target = logits.masked_fill(~target_mask, -math.inf).logsumexp(dim=1) - log_all
    log_others = logits.masked_fill(target_mask, -math.inf).logsumexp(dim=1) - log_all
    return torch.stack([log_target, log_others], dim=1)


def _non_target_log_probs(logits: Tensor, targets: Tensor) -> Tensor:
    """``log_softmax`` over the non-target classes only, shape (B, C - 1) (a gather: no host sync)."""
    ranks = torch.arange(logits.shape[1] - 1, device=logits.device).expand(len(targets), -1)
    others = ranks + (ranks >= targets[:, None]).long()
    return F.log_softmax(logits.gather(1, others), dim=1)


def dkd_parts(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
              temperature: float = 4.0) -> tuple[Tensor, Tensor]:
    """``(TCKD, NCKD)``, each with the T^2 factor, computed in float32."""
    z_s = student_logits.float() / temperature
    z_t = teacher_logits.float() / temperature
    target_mask = F.one_hot(targets, z_s.shape[1]).bool()
    tckd = kl_divergence(_binary_log_probs(z_t, target_mask), _binary_log_probs(z_s, target_mask), 1).mean()
    nckd = kl_divergence(_non_target_log_probs(z_t, targets), _non_target_log_probs(z_s, targets), 1).mean()
    return tckd * temperature**2, nckd * temperature**2


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float = 1.0,
             beta: float = 8.0, temperature: float = 4.0) -> Tensor:
    """``alpha * TCKD + beta * NCKD`` (without the warm-up factor)."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, targets, temperature)
    return alpha * tckd + beta * nckd


def warmup_factor(progress: float, warmup_epochs: float) -> float:
    """mdistiller's ``min(epoch / warmup, 1)`` with its 1-based epoch: ``epoch = floor(progress) + 1``."""
    if warmup_epochs <= 0:
        return 1.0
    return min((math.floor(progress) + 1) / warmup_epochs, 1.0)


class DKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    warmup_epochs: float = Field(20.0, ge=0)


@register_method("dkd")
class DecoupledKD(Distiller):
    """Cross-entropy plus the warmed-up ``alpha * TCKD + beta * NCKD``."""

    terms = ("ce", "dkd")
    default_weights = {"ce": 1.0, "dkd": 1.0}
    Params = DKDParams
    teacher_cache = "logits"
    composable = True

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        p = self.params
        teacher_logits = self.batch_teacher_logits(batch)
        logits = self.student_forward(batch.inputs)
        dkd = dkd_loss(logits, teacher_logits, batch.targets, p.alpha, p.beta, p.temperature)
        return DistillOutput(
            {
                "ce": self.label_loss(logits, batch.targets),
                "dkd": warmup_factor(step.stage_progress, p.warmup_epochs) * dkd,
            },
            logits,
        )
