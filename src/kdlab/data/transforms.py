"""Per-sample torchvision transforms on uint8 image tensors, for the DataLoader path.

Small decoded images get the same crop/flip as :class:`kdlab.data.augment.CropFlip`; large images get
the standard ImageNet recipes: ``RandomResizedCrop`` + flip for training, ``Resize`` to size/0.875 +
``CenterCrop`` for evaluation. All outputs stay uint8; normalization happens on the device.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torchvision.transforms import v2

from kdlab.data.augment import CropFlip

Transform = Callable[[Tensor], Tensor]
EVAL_CROP_RATIO = 0.875


def crop_flip_transform(policy: CropFlip, height: int, width: int) -> Transform:
    """``RandomCrop`` with zero padding, then a horizontal flip when the policy has one."""
    steps: list[Transform] = [v2.RandomCrop((height, width), padding=policy.padding, fill=0)]
    if policy.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def large_train_transform(size: int) -> Transform:
    """``RandomResizedCrop(size)`` + horizontal flip."""
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])


def large_eval_transform(size: int) -> Transform:
    """Resize the shorter side to ``size / 0.875``, then ``CenterCrop(size)``."""
    return v2.Compose([v2.Resize(round(size / EVAL_CROP_RATIO), antialias=True), v2.CenterCrop(size)])
