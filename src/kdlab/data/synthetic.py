"""Random images with learnable class structure, for tests and benchmarks; nothing is read from disk.

Each class has a smooth random mean pattern (a 4x4 random grid upsampled to the image size, values in
48..208); a sample is its class pattern plus Gaussian pixel noise, rounded to uint8. Labels are balanced.
Everything is a pure function of the options, ``data_seed`` included.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from kdlab.core.errors import ConfigError
from kdlab.data.memory import check_fits
from kdlab.data.order import derive_seed
from kdlab.data.raw import RawDataset, Split

CHUNK = 8192


def _generator(data_seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(data_seed, stream))


def _samples(patterns: Tensor, count: int, noise: float, generator: torch.Generator) -> Split:
    num_classes = len(patterns)
    targets = (torch.arange(count) % num_classes)[torch.randperm(count, generator=generator)]
    images = torch.empty(count, *patterns.shape[1:], dtype=torch.uint8)
    for start in range(0, count, CHUNK):
        labels = targets[start : start + CHUNK]
        pixels = patterns[labels] + noise * torch.randn(len(labels), *patterns.shape[1:], generator=generator)
        images[start : start + CHUNK] = pixels.round_().clamp_(0, 255).to(torch.uint8)
    return Split(targets, images=images)


def load_synthetic(
    root: str | Path | None = None,
    *,
    image_size: int | None = None,
    num_classes: int = 10,
    channels: int = 3,
    num_train: int = 5000,
    num_test: int = 1000,
    noise: float = 48.0,
    data_seed: int = 0,
) -> RawDataset:
    """Synthetic ``channels`` x ``image_size`` x ``image_size`` images (32 by default); ``root`` is unused."""
    size = image_size or 32
    if num_classes < 2 or num_train < num_classes or num_test < 1 or channels < 1:
        raise ConfigError("data.options: synthetic needs num_classes >= 2, num_train >= num_classes, "
                          "num_test >= 1 and channels >= 1")
    where = "data.options: synthetic:"
    check_fits(num_classes, (channels, size, size), 4, f"{where} {num_classes} class patterns")
    check_fits(num_train + num_test, (channels, size, size), 1, f"{where} {num_train + num_test} images")
    grid = torch.rand(num_classes, channels, 4, 4, generator=_generator(data_seed, 0))
    patterns = 48 + 160 * F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
    train = _samples(patterns, num_train, noise, _generator(data_seed, 1))
    test = _samples(patterns, num_test, noise, _generator(data_seed, 2))
    return RawDataset(train, test, [f"class_{i}" for i in range(num_classes)])
