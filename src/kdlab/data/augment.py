"""Batched augmentation and normalization of uint8 images on the training device.

:func:`crop_flip` is ``RandomCrop(padding=p, fill=0)`` followed by ``RandomHorizontalFlip`` applied to a
whole batch with per-sample parameters, without a Python loop: rows and columns of the zero-padded image
are gathered by index, out-of-image positions are zeroed. For given offsets and flips it is equal to
the per-sample transform; offsets are uniform on ``0..2p`` and flips fair, as torchvision draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CropFlip:
    """Random crop after ``padding`` px of zero padding on every side, then an optional random flip."""

    padding: int
    flip: bool = True

    def draw(self, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample (top offset, left offset, flip) in the padded image, drawn on the CPU."""
        top = torch.randint(0, 2 * self.padding + 1, (count,), generator=generator)
        left = torch.randint(0, 2 * self.padding + 1, (count,), generator=generator)
        flip = torch.randint(0, 2, (count,), generator=generator).bool()
        return top, left, flip & self.flip


def crop_flip(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int) -> Tensor:
    """Crop each image of a B x C x H x W batch at (top, left) of its zero-padded copy, then flip.

    ``top``/``left`` are offsets in ``0..2*padding`` into the image padded by ``padding`` on each side,
    ``flip`` a bool per sample; all three live on the images' device.
    """
    b, c, h, w = images.shape
    rows = top[:, None] - padding + torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device).expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + left[:, None] - padding
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    out = images.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
    return out.masked_fill(~inside, 0)


class Normalize:
    """uint8 images -> float32 ``(x / 255 - mean) / std`` per channel, on ``device``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1 / (255 * std_t)).to(device)
        self.shift = (mean_t / std_t).to(device)

    def __call__(self, images: Tensor) -> Tensor:
        return images.float().mul_(self.scale).sub_(self.shift)
