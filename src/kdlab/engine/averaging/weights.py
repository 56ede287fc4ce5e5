"""The averaged copy of a model and the in-place tensor arithmetic every strategy uses.

All updates run on the training device with ``torch._foreach_*`` ops over the list of averaged
tensors, so a dense (every-step) update costs one fused pass over the weights and never copies a
model:

- uniform running mean, weighted: ``total += w; avg <- avg + (w / total) * (x - avg)``
  (``_foreach_lerp_``; with equal weights this is theta_bar <- theta_bar + (theta_t - theta_bar) / n);
- exponential moving average: ``avg <- decay * avg + (1 - decay) * x`` (``_foreach_lerp_`` by 1 - decay);
- copy: ``_foreach_copy_``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

BufferPolicy = Literal["average", "recalibrate"]


def detached_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` in eval mode, without the hooks other code put on ``model``.

    Hooks (feature taps of a method) belong to the online model; the averaged copy must not feed them.
    """
    clone = copy.deepcopy(model)
    for module in clone.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
        module._backward_hooks.clear()
    clone.requires_grad_(False)
    return clone.eval()


def averaged_tensors(model: nn.Module, buffers: BufferPolicy) -> tuple[list[Tensor], list[Tensor]]:
    """(tensors to average, tensors to copy) of ``model``, in a fixed order.

    Every parameter is averaged. Floating-point buffers (BatchNorm running statistics) are averaged
    too under ``buffers="average"`` (constant, hence unchanged, when BN is frozen) and left to
    recalibration under ``"recalibrate"``. Integer buffers (``num_batches_tracked``) are copied.
    """
    averaged = [p.data for p in model.parameters()]
    copied = []
    for buffer in model.buffers():
        if buffer.is_floating_point():
            if buffers == "average":
                averaged.append(buffer)
        elif buffers == "average":
            copied.append(buffer)
    return averaged, copied


class RunningMean:
    """``targets`` kept as a running average of source tensor lists, updated in place.

    ``total`` is the weight averaged so far (the number of iterates, for unit weights).
    """

    def __init__(self, targets: Sequence[Tensor]) -> None:
        self.targets = list(targets)
        self.total = 0.0

    @torch.no_grad()
    def add(self, sources: Sequence[Tensor], weight: float = 1.0) -> None:
        """Fold ``sources`` in with ``weight`` (the uniform mean of everything added, weighted)."""
        self.total += weight
        if self.total == weight:
            torch._foreach_copy_(self.targets, list(sources))
        else:
            torch._foreach_lerp_(self.targets, list(sources), weight / self.total)

    @torch.no_grad()
    def ema(self, sources: Sequence[Tensor], decay: float) -> None:
        """``target <- decay * target + (1 - decay) * source`` (a copy when nothing was added yet)."""
        if self.total == 0:
            torch._foreach_copy_(self.targets, list(sources))
        else:
            torch._foreach_lerp_(self.targets, list(sources), 1.0 - decay)
        self.total += 1

    @torch.no_grad()
    def copy_from(self, sources: Sequence[Tensor]) -> None:
        """Overwrite the targets; the running total is unchanged."""
        torch._foreach_copy_(self.targets, list(sources))

    def reset(self) -> None:
        self.total = 0.0


class AveragedModel:
    """A frozen copy of the student whose averaged tensors track the student's, on its device."""

    def __init__(self, student: nn.Module, buffers: BufferPolicy) -> None:
        self.module = detached_copy(student)
        self.sources, self.source_copied = averaged_tensors(student, buffers)
        targets, self.target_copied = averaged_tensors(self.module, buffers)
        if len(targets) != len(self.sources):
            raise RuntimeError("the averaged copy does not mirror the student's tensors")
        self.mean = RunningMean(targets)

    @torch.no_grad()
    def copy_buffers(self) -> None:
        """Integer buffers follow the student (they are not averageable)."""
        if self.target_copied:
            torch._foreach_copy_(self.target_copied, self.source_copied)

    def add(self, weight: float = 1.0) -> None:
        self.mean.add(self.sources, weight)
        self.copy_buffers()

    def ema(self, decay: float) -> None:
        self.mean.ema(self.sources, decay)
        self.copy_buffers()

    def track_online(self) -> None:
        """Make the copy equal to the online student (before averaging starts)."""
        self.mean.copy_from(self.sources)
        self.copy_buffers()
