"""KD from an ensemble of teachers: the KD baseline of Nam, Lee, Heo & Lee (ICML 2022), "Improving
Ensemble Distillation With Weight Averaging and Diversifying Perturbation" (code ``train_KD.py``).

The student matches each of the M teachers' tempered distributions, averaged over teachers:

    L_kd = T^2 * (1/(M B)) sum_i sum_b KL( softmax(z_Ti(x_b)/T) || softmax(z_S(x_b)/T) )
    L    = w_ce * CE(z_S, y) + w_kd * L_kd

The reference writes the cross-entropy ``H(p_Ti, p_S)`` instead of the KL; they differ by the
teachers' entropy, a constant, so the gradients are equal. Because the loss is linear in the target,
this is distilling the *mean of the tempered teacher distributions*, not the tempered mean
prediction. Defaults are the paper's CIFAR-100 setting: T = 4, ``kd`` 1, ``ce`` 0 (alpha = 1).

Teachers come from the config's ``teachers`` list (a :class:`kdlab.ensemble.TeacherEnsemble`); a
single ``teacher`` is an ensemble of one. ``perturb`` adds the diversifying perturbation; with a plain
student there are no student members, so only the teachers' disagreement (TDiv) is ascended. Every
evaluation also reports agreement with, and KL from, the ensemble's prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from kdlab.data.batch import Batch
from kdlab.ensemble import TeacherEnsemble, member_logits
from kdlab.methods.base import DistillContext, Distiller, DistillOutput, StepContext
from kdlab.methods.divergence import kl_divergence
from kdlab.methods.diversify import InputPerturber, PerturbParams
from kdlab.methods.registry import register_method


def ensemble_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``T^2 * mean_{i,b} KL(softmax(z_Ti/T) || softmax(z_Si/T))`` in float32.

    ``teacher_logits`` is (M, B, K); ``student_logits`` is (M, B, K) (member i matches teacher i) or
    (B, K) (one student matches every teacher).
    """
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = kl_divergence(log_p_t, log_p_s).mean()
    return kl * temperature**2


class EnsembleKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0)
    perturb: PerturbParams = Field(default_factory=PerturbParams)


def teacher_count(teacher: nn.Module | None) -> int:
    return len(teacher) if isinstance(teacher, TeacherEnsemble) else 1


class EnsembleTeacherMixin:
    """What the ensemble methods share: member logits of the teachers and the evaluation reference."""

    teacher: nn.Module
    teacher_inputs: Callable[[Tensor], Tensor]
    teacher_logits: Callable[[Tensor], Tensor]

    perturber: InputPerturber

    @property
    def teacher_cache(self) -> str:
        """A cache holds the members' logits on the training views; perturbed inputs need the teachers."""
        return "none" if self.perturber.enabled else "members"

    def teacher_members(self, inputs: Tensor) -> Tensor:
        """(M, B, K) teacher logits, with gradients to ``inputs`` (for the perturbation)."""
        return member_logits(self.teacher, self.teacher_inputs(inputs))

    def batch_teacher_members(self, batch: Batch, inputs: Tensor) -> Tensor:
        """(M, B, K) teacher logits for ``inputs``: from the teacher cache when they are the batch's own
        inputs and the batch carries the cached members, else from the teachers (no gradients)."""
        if batch.teacher is not None and inputs is batch.inputs:
            return batch.teacher["members"]
        with torch.no_grad():
            return self.teacher_members(inputs)

    def eval_reference(self) -> Callable[[Tensor], Tensor]:
        """The teachers' ensemble prediction: evaluations report agreement and KL against it."""
        return self.teacher_logits


@register_method("ensemble_kd")
class EnsembleKD(EnsembleTeacherMixin, Distiller):
    """A plain student distilled from the mean of M teachers' tempered distributions."""

    terms = ("ce", "kd")
    default_weights = {"ce": 0.0, "kd": 1.0}
    Params = EnsembleKDParams
    soft_targets = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: EnsembleKDParams,
                 context: DistillContext, **norms: Any) -> None:
        super().__init__(student, teacher, params, context, **norms)
        self.perturber = InputPerturber(params.perturb, teacher_count(teacher), norms.get("student_norm"),
                                        context.input_shape[0])

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        inputs, targets = self.perturber(batch.inputs, batch.label_targets, self.teacher_members, None)
        teacher = self.batch_teacher_members(batch, inputs)
        logits = self.student(inputs)
        return DistillOutput(
            {
                "ce": self.label_loss(logits, targets),
                "kd": ensemble_kd_loss(logits, teacher, self.params.temperature),
            },
            logits,
        )
