"""Ensemble distillation into a BatchEnsemble student averaged into one network ("LatentBE"), with the
optional diversifying perturbation ("TDiv-SDiv"): Nam, Lee, Heo & Lee, ICML 2022, "Improving Ensemble
Distillation With Weight Averaging and Diversifying Perturbation" (code ``train_KD_LatentBE.py``,
``train_KD_LatentBE_TDivSDiv.py``).

The student is converted to a BatchEnsemble of M members, M = the number of teachers
(:func:`kdlab.ensemble.to_batchensemble`: every conv and linear gets per-member rank-one factors
initialised to one; normalization layers are shared). The batch is tiled M times and member i is
distilled from teacher i, a fixed one-to-one matching:

    L_kd = T^2 * (1/(M B)) sum_i sum_b KL( softmax(z_Ti(x_b)/T) || softmax(z_Si(x_b)/T) )
    L    = w_ce * CE(z_S, y) (over all members) + w_kd * L_kd

(the reference's cross-entropy form has the same gradient). The factors are decayed toward one and
their loss gradients multiplied by M, as in the reference (see :mod:`kdlab.ensemble.layers`); set
``grad_scale`` to change the multiplier. For evaluation and deployment the factors are averaged over
members and folded into the shared weights and biases (:func:`kdlab.ensemble.merge_batchensemble`):
the ``merged`` model, a plain network of the student's architecture. It is the model that selects
``best.pt`` on validation and whose test metrics the summary reports, as the reference keeps the best
validation accuracy of the averaged student; ``best.pt`` therefore holds an ordinary state_dict of the
student architecture. ``student`` in the logs is the BatchEnsemble itself (the members' ensemble,
M times the inference cost). BatchNorm statistics are kept as trained, with no recalibration.
Defaults: T = 4, ``kd`` 1, ``ce`` 0. ``perturb`` adds the diversifying perturbation
(:mod:`kdlab.methods.diversify`); the student runs in eval mode for its probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from kdlab.config.schema import RunConfig
from kdlab.data.batch import Batch
from kdlab.ensemble import BatchEnsemble, ensemble_log_probs, merge_batchensemble
from kdlab.methods.base import DistillContext, Distiller, DistillOutput, StepContext
from kdlab.methods.diversify import InputPerturber, PerturbParams
from kdlab.methods.ensemble_kd import EnsembleTeacherMixin, ensemble_kd_loss, teacher_count
from kdlab.methods.registry import register_method
from kdlab.models.modes import eval_mode


class BatchEnsembleKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0)
    grad_scale: float | None = Field(None, gt=0, description="factor-gradient multiplier; None = M")
    perturb: PerturbParams = Field(default_factory=PerturbParams)


@register_method("batchensemble_kd")
class BatchEnsembleKD(EnsembleTeacherMixin, Distiller):
    """A BatchEnsemble student whose member i learns from teacher i; deployed as the merged network."""

    terms = ("ce", "kd")
    default_weights = {"ce": 0.0, "kd": 1.0}
    Params = BatchEnsembleKDParams
    select_model: ClassVar[str] = "merged"
    soft_targets = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: BatchEnsembleKDParams,
                 context: DistillContext, **norms: Any) -> None:
        members = teacher_count(teacher)
        if not isinstance(student, BatchEnsemble):
            student = BatchEnsemble(student, members, grad_scale=params.grad_scale)
        elif student.size != members:
            raise ValueError(f"the BatchEnsemble student has {student.size} members for {members} teachers")
        super().__init__(student, teacher, params, context, **norms)
        self.perturber = InputPerturber(params.perturb, members, norms.get("student_norm"),
                                        context.input_shape[0])
        self.__dict__["_merged"] = None

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> BatchEnsembleKD:
        super()._apply(fn, recurse)
        self.__dict__["_merged"] = None
        return self

    def merged(self) -> nn.Module:
        """The student with factors averaged and folded in (a plain network, refreshed on each call)."""
        self.__dict__["_merged"] = merge_batchensemble(self.student, out=self.__dict__["_merged"])
        return self.__dict__["_merged"]

    def eval_models(self) -> dict[str, nn.Module]:
        return {"merged": self.merged()}

    @classmethod
    def student_module(cls, network: nn.Module, config: RunConfig, weights: Mapping[str, Tensor]
                       ) -> nn.Module:
        """The BatchEnsemble the student trains as (``last.pt``: its members' rank-one factors are in
        ``weights``), or ``network`` itself for the merged network that ``best.pt`` holds."""
        factors = [v for k, v in weights.items() if k.endswith(".r_offset")]
        return BatchEnsemble(network, factors[0].shape[0]) if factors else network

    @classmethod
    def deploy_student(cls, student: nn.Module) -> nn.Module:
        return merge_batchensemble(student) if isinstance(student, BatchEnsemble) else student

    def student_members(self, inputs: Tensor) -> Tensor:
        """(M, B, K) logits of the student's members in eval mode (the perturbation's probe)."""
        with eval_mode(self.student):
            return self.student.member_logits(inputs)

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        inputs, targets = self.perturber(batch.inputs, batch.label_targets, self.teacher_members,
                                         self.student_members)
        teacher = self.batch_teacher_members(batch, inputs)
        student = self.student.member_logits(inputs)
        members = student.shape[0]
        return DistillOutput(
            {
                "ce": self.label_loss(student.flatten(0, 1), torch.cat([targets] * members)),
                "kd": ensemble_kd_loss(student, teacher, self.params.temperature),
            },
            ensemble_log_probs(student),
        )
