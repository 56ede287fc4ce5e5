"""The in-memory form every format reader returns: train and test parts plus class names.

A part is either *decoded* (``images``: a uint8 tensor N x C x H x W) or *lazy* (``files``: image paths
decoded on the fly in DataLoader workers, for trees of large images). ``targets`` are int64 class ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from kdlab.data.errors import DatasetFormatError
from kdlab.data.memory import check_fits


@dataclass(frozen=True)
class Split:
    """One part of a dataset: labels plus either decoded images or file paths."""

    targets: Tensor
    images: Tensor | None = None
    files: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.images is None) == (self.files is None):
            raise ValueError("a Split holds exactly one of images or files")
        if len(self) != len(self.targets):
            raise ValueError(f"{len(self)} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.files)

    @property
    def decoded(self) -> bool:
        return self.images is not None

    def select(self, indices: Tensor) -> Split:
        """The samples at ``indices`` (an int64 tensor), in that order."""
        targets = self.targets[indices]
        if self.images is not None:
            return Split(targets, images=self.images[indices])
        return Split(targets, files=tuple(self.files[i] for i in indices.tolist()))


@dataclass(frozen=True)
class RawDataset:
    """What a format reader returns: the train and test parts and the class names (index = label)."""

    train: Split
    test: Split
    classes: list[str]


def check_labels(targets: Tensor, num_classes: int, source: str) -> Tensor:
    """``targets`` as int64, or a :class:`DatasetFormatError` naming ``source`` if one is out of range."""
    targets = targets.to(torch.int64)
    bad = (targets < 0) | (targets >= num_classes)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise DatasetFormatError(
            f"{source}: label {int(targets[first])} at position {first} is outside 0..{num_classes - 1}"
        )
    return targets


def resize_images(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Resize a uint8 N x C x H x W tensor to ``size`` x ``size`` (antialiased bilinear), chunk by chunk.

    Non-square images are resized on their shorter side and center-cropped, so nothing is distorted.
    """
    if images.shape[-2:] == (size, size):
        return images
    parts = [
        TF.center_crop(TF.resize(images[i : i + chunk], size, antialias=True), size)
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(parts) if parts else images.new_empty(len(images), images.shape[1], size, size)


def resize_dataset(data: RawDataset, size: int | None) -> RawDataset:
    """``data`` with decoded parts resized to ``size`` (unchanged when ``size`` is None)."""
    if size is None:
        return data
    count = len(data.train) + len(data.test)
    shape = (data.train.images.shape[1], size, size)
    check_fits(count, shape, 1, f"data.image_size: {count} images at {size} px")
    return RawDataset(
        Split(data.train.targets, images=resize_images(data.train.images, size)),
        Split(data.test.targets, images=resize_images(data.test.images, size)),
        data.classes,
    )


def channel_stats(images: Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].to(torch.float64).div_(255)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
