"""Hinton KD: soft targets at temperature T (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in
a Neural Network").

    L_kd = T^2 * (1/B) * sum_i KL( softmax(z_t,i / T) || softmax(z_s,i / T) )
    L    = w_ce * CE(z_s, y) + w_kd * L_kd

The KL is summed over classes and averaged over the batch ("batchmean"), as in RepDistiller,
mdistiller and torchdistill. The weights are named by their term: ``method.weights.ce`` and
``method.weights.kd``; defaults are RepDistiller's CIFAR-100 setting (ce 0.1, kd 0.9, T 4). Note that
torchdistill's ``alpha`` weights the CE term, the opposite of RepDistiller's ``-a``: torchdistill's
``alpha: 0.9`` is ``weights: {ce: 0.9, kd: 0.1}`` here.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdlab.data.batch import Batch
from kdlab.methods.base import Distiller, DistillOutput, StepContext
from kdlab.methods.divergence import kl_divergence
from kdlab.methods.registry import register_method


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``T^2 * mean_i KL(softmax(z_t/T) || softmax(z_s/T))``, computed in float32."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = kl_divergence(log_p_t, log_p_s, dim=1).mean()
    return kl * temperature**2


class KDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0)


@register_method("kd")
class HintonKD(Distiller):
    """Cross-entropy on labels plus the temperature-scaled KL to the teacher's soft targets."""

    terms = ("ce", "kd")
    default_weights = {"ce": 0.1, "kd": 0.9}
    Params = KDParams
    teacher_cache = "logits"
    composable = True
    soft_targets = True

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        teacher_logits = self.batch_teacher_logits(batch)
        logits = self.student_forward(batch.inputs)
        return DistillOutput(
            {
                "ce": self.label_loss(logits, batch.label_targets),
                "kd": kd_loss(logits, teacher_logits, self.params.temperature),
            },
            logits,
        )
