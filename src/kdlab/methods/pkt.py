"""PKT: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer"), on the penultimate embedding with the cosine-similarity kernel.

With x_i the L2-normalized embedding of sample i (eps = 1e-7 added to the norm):

    K_ij   = (x_i . x_j + 1) / 2                       (cosine similarity mapped to [0, 1])
    P_ij   = K_ij / sum_k K_ik                          (each row a distribution; the diagonal is kept)
    L_pkt  = mean over the B^2 entries of P^T_ij * log((P^T_ij + eps) / (P^S_ij + eps))
    L      = w_ce * CE(z_s, y) + w_pkt * L_pkt

This is the authors' code as used by RepDistiller and mdistiller (``PKT.cosine_similarity_loss``): the
KL of every row, averaged over B^2 entries rather than summed (the paper's sum over i, j is B^2 times
larger), eps 1e-7, self-similarity kept in the row sums. The default weights, ce 1 and pkt 30000, are
RepDistiller's and mdistiller's CIFAR-100 setting, tuned for this mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillOutput, StepContext
from kdlab.methods.features import FeatureDistiller
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint

EPS = 1e-7


def cosine_conditional_probabilities(embeddings: Tensor, eps: float = EPS) -> Tensor:
    """Row-stochastic B x B matrix of the cosine kernel ``(cos + 1) / 2``."""
    with torch.autocast(embeddings.device.type, enabled=False):
        flat = embeddings.float().flatten(1)
        unit = flat / (flat.norm(dim=1, keepdim=True) + eps)
        kernel = (unit @ unit.t() + 1.0) / 2.0
        return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = EPS) -> Tensor:
    """``mean(P_T * log((P_T + eps) / (P_S + eps)))`` over the B x B entries, in float32."""
    p_s = cosine_conditional_probabilities(student, eps)
    p_t = cosine_conditional_probabilities(teacher, eps).detach()
    return (p_t * ((p_t + eps) / (p_s + eps)).log()).mean()


@register_method("pkt")
class ProbabilisticKT(FeatureDistiller):
    """CE plus the PKT loss on one layer (default: the penultimate embedding)."""

    terms = ("ce", "pkt")
    default_weights = {"ce": 1.0, "pkt": 30000.0}
    soft_targets = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if len(self.student_shapes) != 1 or len(self.teacher_shapes) != 1:
            raise ConfigError("method.params.student_layers: pkt compares one embedding per model; name "
                              "exactly one student layer and one teacher layer")

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return [preset.embedding]

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        out = self.run_models(batch)
        pkt = pkt_loss(out.student_features[0], out.teacher_features[0])
        return DistillOutput({"ce": self.label_loss(out.student_logits, batch.label_targets), "pkt": pkt},
                             out.student_logits)
