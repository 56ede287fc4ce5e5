"""RKD: relational knowledge distillation (Park, Kim, Lu & Cho, CVPR 2019, "Relational Knowledge
Distillation"), distance-wise and angle-wise terms on the penultimate embedding.

With t_i, s_i the teacher's and student's embeddings of sample i (flattened) and Huber = smooth L1
(delta 1, PyTorch ``smooth_l1_loss``):

    psi_D(i, j)    = ||t_i - t_j||_2 / mu_t,   mu_t = mean of the non-zero pairwise distances of the batch
    psi_A(i, j, k) = < e_ij, e_kj >,           e_ij = (t_i - t_j) / ||t_i - t_j||_2
    L_rkd_distance = mean over all B^2 pairs of Huber(psi_D^S - psi_D^T)
    L_rkd_angle    = mean over all B^3 triplets of Huber(psi_A^S - psi_A^T)
    L = w_ce * CE(z_s, y) + w_d * L_rkd_distance + w_a * L_rkd_angle

The teacher's relations are constants; the student's mu_s stays in the graph. Pairwise distances follow
the reference ``pdist``: squared distances clamped at 1e-12 before the square root, diagonal set to 0.
The two terms are logged separately; their default weights 25 / 50 are the paper's and RepDistiller's /
mdistiller's CIFAR setting (RepDistiller's ``-b 1`` multiplies both).

Option ``normalize`` (default False, the paper's definitions, RepDistiller and mdistiller): True
L2-normalizes each embedding first, as the official classification script
(lenscloth/RKD ``run_distill_classification.py``) does; that changes the geometry, not only the scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import ConfigDict
from torch import Tensor

from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillOutput, StepContext
from kdlab.methods.features import FeatureDistiller, FeatureParams
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint


def pairwise_distances(embeddings: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix, squared distances clamped at ``eps``, zero diagonal."""
    with torch.autocast(embeddings.device.type, enabled=False):
        embeddings = embeddings.float()
        squared = embeddings.pow(2).sum(dim=1)
        dist = squared.unsqueeze(1) + squared.unsqueeze(0) - 2 * embeddings @ embeddings.t()
        dist = dist.clamp(min=eps).sqrt()
        return dist * (1 - torch.eye(len(embeddings), device=dist.device, dtype=dist.dtype))


def _normalized_distances(embeddings: Tensor) -> Tensor:
    dist = pairwise_distances(embeddings)
    return dist / (dist.sum() / (dist > 0).sum().clamp(min=1))  # the mean of the positive entries


def _angles(embeddings: Tensor) -> Tensor:
    """``<e_ji, e_ki>`` for every vertex i (B x B x B); zero where two points coincide."""
    with torch.autocast(embeddings.device.type, enabled=False):
        directions = F.normalize(embeddings.unsqueeze(0) - embeddings.unsqueeze(1), p=2, dim=2)
        return torch.bmm(directions, directions.transpose(1, 2))


def _prepare(student: Tensor, teacher: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    student, teacher = student.float().flatten(1), teacher.float().flatten(1).detach()
    if normalize:
        student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    return student, teacher


def rkd_distance_loss(student: Tensor, teacher: Tensor, normalize: bool = False) -> Tensor:
    """Huber loss between the mean-normalized pairwise distance matrices, averaged over B^2 entries."""
    student, teacher = _prepare(student, teacher, normalize)
    return F.smooth_l1_loss(_normalized_distances(student), _normalized_distances(teacher))


def rkd_angle_loss(student: Tensor, teacher: Tensor, normalize: bool = False) -> Tensor:
    """Huber loss between the triplet angle tensors, averaged over B^3 entries."""
    student, teacher = _prepare(student, teacher, normalize)
    return F.smooth_l1_loss(_angles(student), _angles(teacher))


class RKDParams(FeatureParams):
    model_config = ConfigDict(extra="forbid")
    normalize: bool = False


@register_method("rkd")
class RelationalKD(FeatureDistiller):
    """CE plus the RKD distance and angle terms on one layer (default: the penultimate embedding)."""

    terms = ("ce", "rkd_distance", "rkd_angle")
    default_weights = {"ce": 1.0, "rkd_distance": 25.0, "rkd_angle": 50.0}
    Params = RKDParams
    soft_targets = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if len(self.student_shapes) != 1 or len(self.teacher_shapes) != 1:
            raise ConfigError("method.params.student_layers: rkd relates one embedding per model; name "
                              "exactly one student layer and one teacher layer")

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return [preset.embedding]

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        out = self.run_models(batch)
        student, teacher = out.student_features[0], out.teacher_features[0]
        normalize = self.params.normalize
        return DistillOutput(
            {
                "ce": self.label_loss(out.student_logits, batch.label_targets),
                "rkd_distance": rkd_distance_loss(student, teacher, normalize),
                "rkd_angle": rkd_angle_loss(student, teacher, normalize),
            },
            out.student_logits,
        )
