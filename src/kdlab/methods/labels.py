"""The one cross-entropy on the labels that every method's CE term is (``Distiller.label_loss``).

With class ids ``y`` (q = onehot(y)) or the label distributions ``q`` of a mixed batch (mixup/cutmix),
and label smoothing eps over C classes (Szegedy et al., CVPR 2016, "Rethinking the Inception
Architecture for Computer Vision"):

    q' = (1 - eps) * q + eps / C,      L = -(1/B) * sum_i sum_c q'_ic * log softmax(z_i)_c

which is ``torch.nn.functional.cross_entropy(z, y_or_q, label_smoothing=eps)``, computed in float32.
With class ids and eps = 0 it is the plain CE the methods always computed.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def label_cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """The batch mean of the CE of ``logits`` [B, C] against class ids [B] or distributions [B, C]."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
