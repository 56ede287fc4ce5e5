"""The fast path: a whole uint8 split resident on the training device, batched by indexing.

Order, sharding and augmentation parameters come from :mod:`kdlab.data.order` (a pure function of
``(seed, epoch)``); crop/flip and normalization run on whole batches on the device. With a replayable
teacher cache (:meth:`TensorBatchSource.set_replay`) the crop/flip of each sample is read from the cache
instead, and every batch carries the cached teacher outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from kdlab.data.augment import CropFlip, Normalize, crop_flip
from kdlab.data.batch import Batch, Replay
from kdlab.data.order import Plan, epoch_generator


class TensorBatchSource:
    """A :class:`~kdlab.data.batch.BatchSource` over uint8 images held on ``device``.

    ``batch_size`` is global (all ranks); this rank yields batches of ``batch_size // world_size``.
    With ``shuffle`` (training) the order is a fresh permutation per epoch, padded and sharded like
    ``DistributedSampler``; without it (evaluation) every sample is yielded exactly once across ranks
    and ranks may hold one sample more or less (see :mod:`kdlab.data.order`).
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        shuffle: bool,
        seed: int = 0,
        augment: CropFlip | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 N x C x H x W images, got {images.dtype} {tuple(images.shape)}")
        device = torch.device(device)
        self.plan = Plan(len(images), batch_size, shuffle, drop_last, rank, world_size)
        self.num_samples = len(images)
        self.images = images.to(device)
        self.targets = targets.to(device=device, dtype=torch.int64)
        self.augment = augment
        self.seed = seed
        self.device = device
        self.normalize = Normalize(mean, std, device)
        self.epoch = 0
        self.replay: Replay | None = None

    def __len__(self) -> int:
        return len(self.plan)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def augment_spec(self) -> dict[str, object]:
        """The random augmentation as a teacher cache records it; ``width`` numbers per draw."""
        if self.augment is None:
            return {"kind": "none", "width": 0}
        return {"kind": "crop_flip", "padding": self.augment.padding, "flip": self.augment.flip, "width": 3}

    def draw_by_sample(self, generator: torch.Generator) -> Tensor:
        """One epoch's augmentation draws indexed by sample id, ``[N, width]`` int32 (for a cache)."""
        if self.augment is None:
            return torch.zeros(self.num_samples, 0, dtype=torch.int32)
        return torch.stack([d.int() for d in self.augment.draw(self.num_samples, generator)], dim=1)

    def _view(self, indices: Tensor, draws: Tensor | None) -> Tensor:
        images = self.images.index_select(0, indices)
        if self.augment is not None:
            images = crop_flip(images, draws[:, 0], draws[:, 1], draws[:, 2].bool(), self.augment.padding)
        return self.normalize(images)

    def views(self, indices: Tensor, draws: Tensor, batch_size: int) -> Iterator[Tensor]:
        """Batches of samples ``indices`` augmented with ``draws`` (rows of :meth:`draw_by_sample`)."""
        indices, draws = indices.to(self.device), draws.to(self.device)
        for start in range(0, len(indices), batch_size):
            yield self._view(indices[start : start + batch_size], draws[start : start + batch_size])

    def samples(self) -> Tensor:
        """The split's decoded uint8 images (what identifies its samples to a teacher cache)."""
        return self.images

    def set_replay(self, replay: Replay) -> None:
        """Read augmentation draws and teacher outputs from ``replay`` from now on."""
        self.replay = replay

    def __iter__(self) -> Iterator[Batch]:
        if self.replay is not None:
            yield from self._replayed()
            return
        generator = epoch_generator(self.seed, self.epoch)
        order = self.plan.order(generator)
        positions = self.plan.positions()
        indices = order[positions].to(self.device, non_blocking=True)
        draws = None
        if self.augment is not None:
            slots = self.plan.sample_slots(positions)
            drawn = self.augment.draw(self.num_samples, generator)
            draws = torch.stack([d[slots].int() for d in drawn], dim=1).to(self.device, non_blocking=True)
        step = self.plan.rank_batch_size
        for start in range(0, len(indices), step):
            idx = indices[start : start + step]
            batch_draws = draws[start : start + step] if draws is not None else None
            yield Batch(self._view(idx, batch_draws), self.targets.index_select(0, idx), idx)

    def _replayed(self) -> Iterator[Batch]:
        slab = self.replay.load(self.epoch)
        order = self.plan.order(epoch_generator(self.seed, self.epoch))
        indices = order[self.plan.positions()].to(self.device, non_blocking=True)
        step = self.plan.rank_batch_size
        for start in range(0, len(indices), step):
            idx = indices[start : start + step]
            yield Batch(self._view(idx, slab.augment_for(idx)), self.targets.index_select(0, idx), idx,
                        slab.teacher(idx))
