"""The map-style dataset behind :class:`~kdlab.data.loader_source.LoaderBatchSource`.

Keys are ``(index, augmentation_seed)`` pairs produced by the sampler in the main process, so each
sample's random transform is a pure function of (seed, epoch, position), whatever the number of workers
and even with persistent workers.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdlab.data.decode import decode_file
from kdlab.data.raw import Split
from kdlab.data.transforms import Transform


class SampleDataset(Dataset):
    """Sample ``index`` of a split as ``(uint8 C x H x W image, label, index)``.

    Decoded splits index their tensor; lazy splits decode the file with ``torchvision.io``.
    """

    def __init__(self, split: Split, transform: Transform | None) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, int]:
        index, seed = key
        if self.split.images is not None:
            image = self.split.images[index]
        else:
            image = decode_file(self.split.files[index])
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                image = self.transform(image)
        return image, int(self.split.targets[index]), index
