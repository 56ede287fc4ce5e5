"""The DataLoader path, for images decoded per sample (large-image folders, or ``device_resident="off"``).

The sampler follows the same :class:`~kdlab.data.order.Plan` as the tensor path (same permutation for
the same seed, ``DistributedSampler``-style padding and ``r::world_size`` sharding, ``set_epoch``) and
hands each sample an augmentation seed drawn from the epoch generator. Batches stay uint8 through the
workers and pinned memory, are moved with ``non_blocking`` and normalized on the device. With a
replayable teacher cache (:meth:`LoaderBatchSource.set_replay`) each sample's augmentation seed is read
from the cache, so the transform repeats the draw the teacher saw, and batches carry its outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from kdlab.core.errors import UserError
from kdlab.data.augment import Normalize
from kdlab.data.batch import Batch, Replay
from kdlab.data.order import Plan, epoch_generator
from kdlab.data.samples import SampleDataset

SEED_RANGE = 2**62
CACHED_SEED_RANGE = 2**31
#: how a DataLoader starts the message of an exception it carries over from a worker process
WORKER_PREFIX = "Caught "


def worker_error(exc: UserError) -> UserError:
    """A user error re-raised from a DataLoader worker, whose message is the worker's whole traceback, as
    the one line it was in the worker (the traceback's last line, less the exception's name)."""
    text = str(exc)
    if not text.startswith(WORKER_PREFIX):
        return exc
    last = text.rstrip().splitlines()[-1]
    name, sep, message = last.partition(": ")
    return type(exc)(message if sep and name.endswith(type(exc).__name__) else last)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(sample index, augmentation seed)`` for one rank; a pure function of (seed, epoch)."""

    def __init__(self, plan: Plan, seed: int) -> None:
        self.plan = plan
        self.seed = seed
        self.epoch = 0
        self.cached_seeds: Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan.positions())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = epoch_generator(self.seed, self.epoch)
        order = self.plan.order(generator)
        seeds = torch.randint(0, SEED_RANGE, (self.plan.num_samples,), generator=generator)
        positions = self.plan.positions()
        if self.cached_seeds is not None:
            ids = order[positions]
            yield from zip(ids.tolist(), self.cached_seeds[ids].tolist(), strict=True)
            return
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
        self.num_workers = num_workers
        self.replay: Replay | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def augment_spec(self) -> dict[str, object]:
        """The random augmentation as a teacher cache records it: one transform seed per sample."""
        transform = self.loader.dataset.transform
        if transform is None:
            return {"kind": "none", "width": 0}
        return {"kind": "seeded", "transform": repr(transform), "torchvision": torchvision.__version__,
                "width": 1}

    def draw_by_sample(self, generator: torch.Generator) -> Tensor:
        """One epoch's transform seeds indexed by sample id, ``[N, width]`` int32 (for a cache)."""
        if self.loader.dataset.transform is None:
            return torch.zeros(self.num_samples, 0, dtype=torch.int32)
        return torch.randint(0, CACHED_SEED_RANGE, (self.num_samples, 1), generator=generator,
                             dtype=torch.int32)

    def views(self, indices: Tensor, draws: Tensor, batch_size: int) -> Iterator[Tensor]:
        """Batches of samples ``indices`` transformed with the seeds ``draws``, normalized (for a cache)."""
        seeds = draws[:, 0].tolist() if draws.shape[1] else [0] * len(indices)
        keys = list(zip(indices.tolist(), seeds, strict=True))
        loader = DataLoader(self.loader.dataset, batch_size=batch_size, sampler=keys,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        for images, _, _ in loader:
            yield self.normalize(images.to(self.device, non_blocking=True))

    def samples(self) -> Tensor | list[str]:
        """The split's decoded images, or its file paths when it decodes them lazily."""
        split = self.loader.dataset.split
        return split.images if split.images is not None else [str(f) for f in split.files]

    def set_replay(self, replay: Replay) -> None:
        """Read transform seeds and teacher outputs from ``replay`` from now on."""
        self.replay = replay

    def __iter__(self) -> Iterator[Batch]:
        slab = None
        if self.replay is not None:
            slab = self.replay.load(self.sampler.epoch)
            self.sampler.cached_seeds = slab.augment_for(torch.arange(self.num_samples))[:, 0].cpu() \
                if self.loader.dataset.transform is not None else None
        try:
            for images, targets, indices in self.loader:
                indices = indices.to(self.device, non_blocking=True)
                yield Batch(
                    self.normalize(images.to(self.device, non_blocking=True)),
                    targets.to(self.device, non_blocking=True),
                    indices,
                    slab.teacher(indices) if slab is not None else None,
                )
        except UserError as exc:
            raise worker_error(exc) from None
