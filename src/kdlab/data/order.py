"""Sample order and sharding, shared by both batch sources so that they visit samples identically.

Every epoch draws from one ``torch.Generator`` seeded by ``(seed, epoch)``: first a permutation of the
``n`` samples, then ``n`` augmentation draws, one per position of the permutation. Training order is
padded like ``DistributedSampler`` (the permutation's head repeated up to a multiple of
``world_size``) and rank ``r`` takes positions ``r::world_size``, in per-rank batches of
``batch_size // world_size``; so one step's per-rank batches together are exactly the single-process
batch of ``batch_size``, with the same augmentation (the last batch without ``drop_last`` may add
padding duplicates). With ``drop_last`` every rank yields ``n // batch_size`` batches (the single-process
count), which never reaches the padding. Evaluation order is the natural one, unpadded: rank ``r`` gets
samples ``r::world_size``, each sample is seen exactly once across ranks and ranks may differ by one
sample (and so by one batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kdlab.core.errors import ConfigError


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. a base seed, an epoch and a stream id)."""
    words = np.random.SeedSequence([p % 2**64 for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch."""
    return torch.Generator().manual_seed(derive_seed(seed, epoch))


@dataclass(frozen=True)
class Plan:
    """How one rank walks one split: global batch size, shuffling, sharding and tail handling."""

    num_samples: int
    batch_size: int
    shuffle: bool
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world_size - 1}")
        if self.shuffle and self.num_samples == 0:
            raise ValueError("cannot shuffle an empty split")
        if self.batch_size < self.world_size:
            raise ConfigError(f"data.batch_size: batch_size {self.batch_size} is smaller than world_size "
                              f"{self.world_size}")
        if self.shuffle and self.batch_size % self.world_size:
            raise ConfigError(
                f"training batch_size {self.batch_size} must be a multiple of world_size {self.world_size}"
            )

    @property
    def rank_batch_size(self) -> int:
        """Samples per batch on this rank."""
        return self.batch_size // self.world_size

    @property
    def total(self) -> int:
        """Length of the epoch order (padded to a multiple of ``world_size`` when shuffling)."""
        if not self.shuffle:
            return self.num_samples
        return math.ceil(self.num_samples / self.world_size) * self.world_size

    def positions(self) -> Tensor:
        """This rank's positions in the epoch order, truncated to whole batches under ``drop_last``."""
        positions = torch.arange(self.rank, self.total, self.world_size)
        if self.drop_last:
            steps = self.num_samples // self.batch_size
            positions = positions[: steps * self.rank_batch_size]
        return positions

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        return math.ceil(len(self.positions()) / self.rank_batch_size)

    def sample_slots(self, positions: Tensor) -> Tensor:
        """Where per-position random draws (of length ``num_samples``) are read for ``positions``.

        Padding positions reuse the draw of the position they duplicate, so the draws of real positions
        do not depend on ``world_size``.
        """
        return positions % self.num_samples

    def order(self, generator: torch.Generator) -> Tensor:
        """The epoch order of sample ids: a padded permutation when shuffling, else ``0..n-1``."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        perm = torch.randperm(self.num_samples, generator=generator)
        pad = self.total - self.num_samples
        if pad:
            perm = torch.cat([perm, perm.repeat(math.ceil(pad / self.num_samples))[:pad]])
        return perm
