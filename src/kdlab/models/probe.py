"""One dummy forward, the way models are checked and feature shapes are measured before training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def probe_forward(model: nn.Module, input_shape: Sequence[int], batch: int = 2) -> Tensor:
    """``model`` on ``batch`` zero images of ``input_shape`` (C, H, W), in eval mode and without
    gradients; the model's train/eval mode is restored afterwards. Hooks on the model fire as usual."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.zeros(batch, *input_shape))
    finally:
        model.train(was_training)
