"""scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``): 1797 8x8 grey images.

Pixel values 0..16 are scaled to 0..255 uint8 (one channel). There is no official test set: a fixed
stratified 20% is held out with a fixed seed, so every run sees the same train/test parts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdlab.data.raw import RawDataset, Split, resize_dataset
from kdlab.data.splits import complement, stratified_pick

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits(root: str | Path | None = None, *, image_size: int | None = None) -> RawDataset:
    """The digits dataset (``root`` is ignored: the data ships with scikit-learn)."""
    from sklearn.datasets import load_digits as sklearn_digits  # imported here: sklearn takes ~1 s to import

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images).mul(255 / 16).round().clamp(0, 255).to(torch.uint8)
    images = images.unsqueeze(1).contiguous()
    targets = torch.from_numpy(bunch.target).to(torch.int64)
    test = stratified_pick(targets, round(TEST_FRACTION * len(targets)), SPLIT_SEED)
    train = complement(len(targets), test)
    data = RawDataset(
        Split(targets[train], images=images[train]),
        Split(targets[test], images=images[test]),
        [str(d) for d in range(10)],
    )
    return resize_dataset(data, image_size)
