"""The DataLoader path, for images decoded per sample (large-image folders, or ``device_resident="off"``).

The sampler follows the same :class:`~kdlab.data.order.Plan` as the tensor path (same permutation for
the same seed, ``DistributedSampler``-style padding and ``r::world_size`` sharding, ``set_epoch``) and
hands each sample an augmentation seed drawn from the epoch generator. Batches stay uint8 through the
workers and pinned memory, are moved with ``non_blocking`` and normalized on the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from kdlab.data.augment import Normalize
from kdlab.data.batch import Batch
from kdlab.data.order import Plan, epoch_generator
from kdlab.data.samples import SampleDataset

SEED_RANGE = 2**62


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(sample index, augmentation seed)`` for one rank; a pure function of (seed, epoch)."""

    def __init__(self, plan: Plan, seed: int) -> None:
        self.plan = plan
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan.positions())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = epoch_generator(self.seed, self.epoch)
        order = self.plan.order(generator)
        seeds = torch.randint(0, SEED_RANGE, (self.plan.num_samples,), generator=generator)
        positions = self.plan.positions()
        yield from zip(
            order[positions].tolist(), seeds[self.plan.sample_slots(positions)].tolist(), strict=True
        )


class LoaderBatchSource:
    """A :class:`~kdlab.data.batch.BatchSource` wrapping a ``DataLoader`` over a :class:`SampleDataset`.

    ``batch_size`` is global; shuffling, sharding and the eval semantics match
    :class:`~kdlab.data.tensor_source.TensorBatchSource`.
    """

    def __init__(
        self,
        dataset: SampleDataset,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
    ) -> None:
        device = torch.device(device)
        plan = Plan(len(dataset), batch_size, shuffle, drop_last, rank, world_size)
        self.num_samples = len(dataset)
        self.sampler = EpochSampler(plan, seed)
        self.loader = DataLoader(
            dataset,
            batch_size=plan.rank_batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
        )
        self.device = device
        self.normalize = Normalize(mean, std, device)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        for images, targets, indices in self.loader:
            yield Batch(
                self.normalize(images.to(self.device, non_blocking=True)),
                targets.to(self.device, non_blocking=True),
                indices.to(self.device, non_blocking=True),
            )
