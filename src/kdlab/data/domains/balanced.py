"""Domain-balanced training batches: every step takes the same number of samples from each source
domain (DomainBed zips one ``InfiniteDataLoader`` per training domain).

The training split is the source domains' in-parts one after another; ``Batch.indices`` are positions
in it. An epoch has ``min_d floor(n_d / b)`` steps (``b`` samples per domain per step), so the
smallest domain is seen once per epoch. In epoch ``e`` domain ``d`` contributes the first
``steps * b`` samples of a permutation drawn from a generator seeded by ``(seed, e, d)`` (DomainBed
samples with replacement; here each domain is sampled without replacement within an epoch); a batch
is the domains' chunks concatenated in domain order. Everything is a pure function of
``(seed, epoch)``, so resume is exact. Under DDP each rank takes its share of every domain's chunk.

Two back ends, as for ordinary data: decoded images held on the device (batched by indexing) or
files decoded by DataLoader workers with a per-sample transform seeded per (seed, epoch, sample).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from kdlab.core.errors import ConfigError
from kdlab.data.augment import CropFlip, Normalize, crop_flip
from kdlab.data.batch import Batch
from kdlab.data.order import derive_seed, epoch_generator
from kdlab.data.raw import Split
from kdlab.data.samples import SampleDataset
from kdlab.data.transforms import Transform

SEED_RANGE = 2**62
BALANCED_STREAM = 31


#: the stream id of the decoded path's augmentation draws (apart from the batch order's)
AUGMENT_STREAM = 1

class BalancedPlan:
    """The per-step sample positions of one rank for domains of ``sizes`` samples."""

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1
                 ) -> None:
        domains = len(sizes)
        if batch_size % domains:
            raise ConfigError(f"data.batch_size: batch_size {batch_size} must be a multiple of the "
                              f"{domains} source domains "
                              "(each step takes the same number of samples from every domain)")
        self.per_domain = batch_size // domains
        if self.per_domain % world_size:
            raise ConfigError(f"data.batch_size: the per-domain batch {self.per_domain} must be a multiple "
                              "of world_size "
                              f"{world_size}")
        small = min(sizes)
        if small < self.per_domain:
            raise ConfigError(f"data.batch_size: a source domain has {small} training samples, fewer than "
                              "the per-domain batch "
                              f"{self.per_domain}")
        self.sizes = list(sizes)
        self.offsets = [sum(self.sizes[:i]) for i in range(domains)]
        self.steps = small // self.per_domain
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> tuple[list[Tensor], list[Tensor]]:
        """(positions, augmentation seeds) of each of this rank's batches in ``epoch``."""
        share = self.per_domain // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        chunks, seeds = [], []
        for d, (size, offset) in enumerate(zip(self.sizes, self.offsets, strict=True)):
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, BALANCED_STREAM, d))
            taken = torch.randperm(size, generator=generator)[: self.steps * self.per_domain] + offset
            drawn = torch.randint(0, SEED_RANGE, (len(taken),), generator=generator)
            chunks.append(taken.view(self.steps, self.per_domain)[:, mine])
            seeds.append(drawn.view(self.steps, self.per_domain)[:, mine])
        positions = torch.cat(chunks, dim=1)
        aug = torch.cat(seeds, dim=1)
        return list(positions), list(aug)


class _BatchSampler(Sampler[list[tuple[int, int]]]):
    def __init__(self, plan: BalancedPlan) -> None:
        self.plan = plan
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        positions, seeds = self.plan.epoch(self.epoch)
        for p, s in zip(positions, seeds, strict=True):
            yield list(zip(p.tolist(), s.tolist(), strict=True))


class DomainBalancedSource:
    """A :class:`~kdlab.data.batch.BatchSource` of domain-balanced training batches.

    ``train`` is the concatenated source in-parts, ``sizes`` their lengths in order. Decoded images
    are kept on ``device``, indexed and, with ``augment``, randomly cropped and flipped there (draws
    seeded by (seed, epoch) on each rank); file-based ones go through a DataLoader with ``transform``.
    """

    def __init__(self, train: Split, sizes: Sequence[int], *, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str, seed: int = 0,
                 transform: Transform | None = None, augment: CropFlip | None = None, rank: int = 0,
                 world_size: int = 1, num_workers: int = 2) -> None:
        self.plan = BalancedPlan(sizes, batch_size, seed, rank, world_size)
        self.num_samples = len(train)
        self.device = torch.device(device)
        self.normalize = Normalize(mean, std, self.device)
        self.epoch = 0
        self.seed = seed
        self.augment = augment
        self.loader: DataLoader | None = None
        if train.decoded:
            self.images = train.images.to(self.device)
            self.targets = train.targets.to(self.device)
        else:
            self.sampler = _BatchSampler(self.plan)
            self.loader = DataLoader(SampleDataset(train, transform), batch_sampler=self.sampler,
                                     num_workers=num_workers, pin_memory=self.device.type == "cuda",
                                     persistent_workers=num_workers > 0)

    def __len__(self) -> int:
        return len(self.plan)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.loader is not None:
            self.sampler.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        if self.loader is not None:
            for images, targets, indices in self.loader:
                yield Batch(self.normalize(images.to(self.device, non_blocking=True)),
                            targets.to(self.device, non_blocking=True),
                            indices.to(self.device, non_blocking=True))
            return
        positions, _ = self.plan.epoch(self.epoch)
        draws = epoch_generator(derive_seed(self.seed, AUGMENT_STREAM), self.epoch)
        for idx in positions:
            idx = idx.to(self.device, non_blocking=True)
            images = self.images.index_select(0, idx)
            if self.augment is not None:
                top, left, flip = (d.to(self.device) for d in self.augment.draw(len(idx), draws))
                images = crop_flip(images, top, left, flip, self.augment.padding)
            yield Batch(self.normalize(images), self.targets.index_select(0, idx), idx)
