"""The fast path: a whole uint8 split resident on the training device, batched by indexing.

Order, sharding and augmentation parameters come from :mod:`kdlab.data.order` (a pure function of
``(seed, epoch)``); crop/flip and normalization run on whole batches on the device, and a per-sample
policy (:mod:`kdlab.data.policies`) image by image on the device, each image under a seed drawn after
the crop/flip draws. With a replayable teacher cache (:meth:`TensorBatchSource.set_replay`) the crop/flip
and policy seed of each sample are read from the cache instead, and every batch carries the cached
teacher outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torchvision
from torch import Tensor

from kdlab.data.augment import CropFlip, Normalize, crop_flip
from kdlab.data.batch import Batch, Replay
from kdlab.data.order import Plan, epoch_generator
from kdlab.data.policies import apply_per_sample, draw_seeds
from kdlab.data.transforms import Transform


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
        policy: Transform | None = None,
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
        self.policy = policy
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
        """The random augmentation as a teacher cache records it; ``width`` numbers per draw (top, left,
        flip of the crop/flip, then the policy's seed)."""
        spec: dict[str, object] = {"kind": "none", "width": 0}
        if self.augment is not None:
            spec = {"kind": "crop_flip", "padding": self.augment.padding, "flip": self.augment.flip,
                    "width": 3}
        if self.policy is not None:
            spec.update(policy=repr(self.policy), torchvision=torchvision.__version__,
                        width=spec["width"] + 1)
        return spec

    def _draws(self, generator: torch.Generator) -> Tensor | None:
        """One epoch's augmentation draws indexed by sample id, ``[N, width]`` int32, or None."""
        drawn = [] if self.augment is None else [d.int() for d in self.augment.draw(self.num_samples,
                                                                                      generator)]
        if self.policy is not None:
            drawn.append(draw_seeds(self.num_samples, generator))
        return torch.stack(drawn, dim=1) if drawn else None

    def draw_by_sample(self, generator: torch.Generator) -> Tensor:
        """One epoch's augmentation draws indexed by sample id, ``[N, width]`` int32 (for a cache)."""
        draws = self._draws(generator)
        return draws if draws is not None else torch.zeros(self.num_samples, 0, dtype=torch.int32)

    def _view(self, indices: Tensor, draws: Tensor | None, seeds: list[int] | None) -> Tensor:
        """Samples ``indices`` cropped/flipped with ``draws`` (on the device) and put through the policy
        with ``seeds``, normalized."""
        images = self.images.index_select(0, indices)
        if self.augment is not None:
            images = crop_flip(images, draws[:, 0], draws[:, 1], draws[:, 2].bool(), self.augment.padding)
        if self.policy is not None:
            images = apply_per_sample(self.policy, images, seeds)
        return self.normalize(images)

    def _seeds(self, draws: Tensor | None) -> list[int] | None:
        return draws[:, -1].tolist() if self.policy is not None else None

    def views(self, indices: Tensor, draws: Tensor, batch_size: int) -> Iterator[Tensor]:
        """Batches of samples ``indices`` augmented with ``draws`` (rows of :meth:`draw_by_sample`)."""
        seeds = self._seeds(draws)
        indices, draws = indices.to(self.device), draws.to(self.device)
        for start in range(0, len(indices), batch_size):
            part = slice(start, start + batch_size)
            yield self._view(indices[part], draws[part], seeds[part] if seeds is not None else None)

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
        draws = self._draws(generator)
        seeds = None
        if draws is not None:
            draws = draws[self.plan.sample_slots(positions)]
            seeds = self._seeds(draws)
            draws = draws.to(self.device, non_blocking=True)
        step = self.plan.rank_batch_size
        for start in range(0, len(indices), step):
            part = slice(start, start + step)
            idx = indices[part]
            yield Batch(self._view(idx, draws[part] if draws is not None else None,
                                   seeds[part] if seeds is not None else None),
                        self.targets.index_select(0, idx), idx)

    def _replayed(self) -> Iterator[Batch]:
        slab = self.replay.load(self.epoch)
        order = self.plan.order(epoch_generator(self.seed, self.epoch))
        indices = order[self.plan.positions()].to(self.device, non_blocking=True)
        step = self.plan.rank_batch_size
        for start in range(0, len(indices), step):
            idx = indices[start : start + step]
            draws = slab.augment_for(idx)
            yield Batch(self._view(idx, draws, self._seeds(draws)), self.targets.index_select(0, idx), idx,
                        slab.teacher(idx))
