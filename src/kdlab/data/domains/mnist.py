"""RotatedMNIST and ColoredMNIST built from the MNIST idx files, as DomainBed defines them
(``domainbed/datasets.py``: ``MultipleEnvironmentMNIST``, ``RotatedMNIST``, ``ColoredMNIST``).

Both pool MNIST's 60k training and 10k test images, shuffle them (here with a generator seeded by
``data_seed``; DomainBed uses the global seed) and give domain i the images ``i::n_domains``.

- **RotatedMNIST** (6 domains): the digits rotated by 0, 15, 30, 45, 60, 75 degrees
  counter-clockwise (PIL bicubic, zero fill, as DomainBed); 10 classes, one channel.
- **ColoredMNIST** (Arjovsky et al., 2019; 3 domains ``+90%``, ``+80%``, ``-90%`` with colour-flip
  probabilities 0.1, 0.2, 0.9): the label is ``digit < 5``, flipped with probability 0.25; the colour
  is the label, flipped with the domain's probability; the image has two channels and the digit is
  drawn in the channel of its colour (the other is zero). 2 classes.

Images are uint8; DomainBed feeds them as ``x / 255`` without normalization (mean 0, std 1 here).
``domain_size`` keeps a class-stratified subset of each domain (drawn with ``data_seed``) before the
per-domain work, for quick runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from kdlab.data.mnist import MNIST, read_idx_dataset
from kdlab.data.order import derive_seed
from kdlab.data.raw import Split
from kdlab.data.splits import take_subset

ANGLES = (0, 15, 30, 45, 60, 75)
COLOR_FLIPS = (0.1, 0.2, 0.9)
LABEL_FLIP = 0.25
SHUFFLE_STREAM, COLOR_STREAM = 11, 12


def _pooled(root: str | Path, data_seed: int) -> tuple[Tensor, Tensor]:
    raw = read_idx_dataset(root, MNIST)
    images = torch.cat([raw.train.images, raw.test.images])
    labels = torch.cat([raw.train.targets, raw.test.targets])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(derive_seed(data_seed,
                                                                                             SHUFFLE_STREAM)))
    return images[order], labels[order]


def _share(images: Tensor, labels: Tensor, i: int, n: int, size: int | None, data_seed: int
           ) -> tuple[Tensor, Tensor]:
    images, labels = images[i::n], labels[i::n]
    keep = take_subset(labels, size, derive_seed(data_seed, i))
    return images[keep], labels[keep]


def rotate(images: Tensor, angle: float) -> Tensor:
    """uint8 N x 1 x H x W digits rotated counter-clockwise by ``angle`` degrees (PIL bicubic, 0 fill)."""
    if angle == 0:
        return images.clone()
    out = [np.asarray(Image.fromarray(img[0].numpy()).rotate(angle, resample=Image.BICUBIC, fillcolor=0))
           for img in images]
    return torch.from_numpy(np.stack(out)).unsqueeze(1)


def rotated_mnist(root: str | Path, *, data_seed: int = 0, domain_size: int | None = None) -> list[Split]:
    images, labels = _pooled(root, data_seed)
    parts = []
    for i, angle in enumerate(ANGLES):
        x, y = _share(images, labels, i, len(ANGLES), domain_size, data_seed)
        parts.append(Split(y, images=rotate(x, angle)))
    return parts


def colored_mnist(root: str | Path, *, data_seed: int = 0, domain_size: int | None = None) -> list[Split]:
    images, labels = _pooled(root, data_seed)
    parts = []
    for i, flip in enumerate(COLOR_FLIPS):
        x, digits = _share(images, labels, i, len(COLOR_FLIPS), domain_size, data_seed)
        generator = torch.Generator().manual_seed(derive_seed(data_seed, COLOR_STREAM, i))
        label = (digits < 5).long() ^ (torch.rand(len(x), generator=generator) < LABEL_FLIP).long()
        color = label ^ (torch.rand(len(x), generator=generator) < flip).long()
        two = x.repeat(1, 2, 1, 1)
        two[torch.arange(len(x)), 1 - color] = 0
        parts.append(Split(label, images=two))
    return parts
