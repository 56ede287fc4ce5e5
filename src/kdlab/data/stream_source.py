"""A :class:`~kdlab.data.batch.BatchSource` over a user's ``Dataset`` or ``DataLoader``, read per batch.

A map-style ``Dataset`` is walked in kdlab's order (:class:`~kdlab.data.order.Plan`: seeded shuffling,
DDP sharding, ``set_epoch``), and each sample is fetched with torch's random generator seeded from the
epoch's draws, so the user's random transforms repeat exactly on resume. An iterable-style ``Dataset``
is read in its own order (one process only). A ``DataLoader`` is used as given: its order, batch size,
workers and transforms are the user's; ``set_epoch`` reaches its sampler when the sampler has one.

Images are checked and normalized on the way in: uint8 images become ``(x / 255 - mean) / std``, float
images (0..1) become ``(x - mean) / std``; a float image outside 0..1 (normalized already) and a label
outside the classes are one line each, read on the host before the batch moves to the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from kdlab.core.errors import UserError
from kdlab.data.augment import Normalize
from kdlab.data.batch import Batch
from kdlab.data.errors import DatasetFormatError
from kdlab.data.loader_source import EpochSampler, worker_error
from kdlab.data.order import Plan
from kdlab.data.user_samples import class_id, image_tensor, split_sample

#: how far past 0..1 a float image may reach (resampling overshoot) before it counts as normalized
FLOAT_RANGE_SLACK = 0.02


class SeededSamples(Dataset):
    """``dataset[index]`` as ``(image, label, index)``, fetched with torch's generator seeded by ``seed``."""

    def __init__(self, dataset: Dataset, where: str) -> None:
        self.dataset = dataset
        self.where = where

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, int]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            image, label = split_sample(self.dataset[index], self.where)
        return image_tensor(image, self.where), class_id(label, self.where), index


def collate_samples(samples: Sequence[tuple[Tensor, int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Stacks ``(image, label, index)`` samples; images of different sizes are refused by the caller."""
    images, labels, indices = zip(*samples, strict=True)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        sizes = ", ".join(map(str, sorted(shapes)))
        raise DatasetFormatError(f"images of different sizes in one batch ({sizes}); give the dataset a "
                                 "transform that resizes them, e.g. torchvision.transforms.v2.Resize")
    return (torch.stack(images), torch.tensor(labels, dtype=torch.int64),
            torch.tensor(indices, dtype=torch.int64))


def unpack_batch(batch: Any, where: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """A user DataLoader's batch as ``(images, labels, indices or None)``: a tuple ``(images, labels[,
    indices])`` or a mapping (keys as :func:`~kdlab.data.user_samples.split_sample`, indices under
    ``index``)."""
    indices = batch.get("index") if isinstance(batch, Mapping) else (
        batch[2] if isinstance(batch, tuple | list) and len(batch) > 2 else None)
    images, labels = split_sample(batch, where)
    if not isinstance(images, Tensor):
        images = torch.stack([image_tensor(image, where) for image in images])
    if images.ndim == 3:
        images = images.unsqueeze(1)
    labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
    return images, labels, None if indices is None else torch.as_tensor(indices).to(torch.int64).reshape(-1)


class StreamBatchSource:
    """Batches of a user's data, normalized on the device; see the module docstring.

    ``indexed`` says whether ``Batch.indices`` identify samples across epochs (a map-style dataset); with a
    DataLoader or an iterable dataset they are the batch's own indices (``index``, or a third element)
    when it carries them, else positions in the epoch.
    """

    def __init__(self, batches: Iterable[Any], *, num_samples: int, num_batches: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], device: torch.device, where: str,
                 indexed: bool, epoch_target: Any = None) -> None:
        self.batches = batches
        self.num_samples = num_samples
        self.num_batches = num_batches
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.normalize = Normalize(mean, std, self.device)
        self.where = where
        self.indexed = indexed
        self.epoch_target = epoch_target

    @classmethod
    def from_dataset(cls, dataset: Dataset, *, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                     rank: int, world_size: int, num_workers: int, **common: Any) -> StreamBatchSource:
        """kdlab's loader over a user ``Dataset`` (its order sharded and seeded as the other sources)."""
        where = common["where"]
        if isinstance(dataset, IterableDataset):
            if world_size > 1:
                raise DatasetFormatError(f"{where}: an iterable-style dataset cannot be sharded across "
                                         f"{world_size} processes by kdlab; pass a DataLoader that shards it")
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                                collate_fn=_IterableCollate(where))
            return cls(loader, num_samples=_length(dataset, where), num_batches=_batches(loader, where),
                       indexed=False, **common)
        plan = Plan(len(dataset), batch_size, shuffle, drop_last, rank, world_size)
        sampler = EpochSampler(plan, seed)
        loader = DataLoader(SeededSamples(dataset, where), batch_size=plan.rank_batch_size, sampler=sampler,
                            num_workers=num_workers, collate_fn=collate_samples,
                            pin_memory=common["device"].type == "cuda", persistent_workers=num_workers > 0)
        return cls(loader, num_samples=len(dataset), num_batches=len(loader), indexed=True,
                   epoch_target=sampler, **common)

    @classmethod
    def from_loader(cls, loader: DataLoader, **common: Any) -> StreamBatchSource:
        """A user ``DataLoader``, as given."""
        where = common["where"]
        target = getattr(loader, "sampler", None)
        if not hasattr(target, "set_epoch"):
            target = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        return cls(loader, num_samples=_length(loader.dataset, where), num_batches=_batches(loader, where),
                   indexed=False, epoch_target=target if hasattr(target, "set_epoch") else None, **common)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        if self.epoch_target is not None:
            self.epoch_target.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        position = 0
        try:
            for batch in self.batches:
                images, labels, indices = unpack_batch(batch, self.where)
                self._check(images, labels)
                if indices is None:
                    indices = torch.arange(position, position + len(labels))
                position += len(labels)
                images = images.to(self.device, non_blocking=True)
                inputs = self.normalize(images if images.dtype == torch.uint8 else images * 255)
                yield Batch(inputs, labels.to(self.device, non_blocking=True),
                            indices.to(self.device, non_blocking=True))
        except UserError as exc:
            raise worker_error(exc) from None

    def _check(self, images: Tensor, labels: Tensor) -> None:
        if len(images) != len(labels):
            raise DatasetFormatError(f"{self.where}: a batch has {len(images)} images but {len(labels)} "
                                     "labels")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = int(labels[(labels < 0) | (labels >= self.num_classes)][0])
            raise DatasetFormatError(f"{self.where}: label {bad} is outside 0..{self.num_classes - 1}; give "
                                     "the dataset's classes (classes=...) or fix its labels")
        if images.is_floating_point() and len(images):
            low, high = torch.aminmax(images)
            if float(low) < -FLOAT_RANGE_SLACK or float(high) > 1 + FLOAT_RANGE_SLACK:
                raise DatasetFormatError(
                    f"{self.where}: float images range over {float(low):.2f}..{float(high):.2f}, not 0..1: "
                    "they look normalized already; kdlab normalizes images itself, so remove Normalize from "
                    "the transform and set data.mean/data.std to its statistics")


class _IterableCollate:
    """Collates an iterable dataset's samples into ``(images, labels, positions)``."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __call__(self, samples: Sequence[Any]) -> tuple[Tensor, Tensor]:
        pairs = [split_sample(sample, self.where) for sample in samples]
        images, labels, _ = collate_samples([(image_tensor(image, self.where), class_id(label, self.where), 0)
                                             for image, label in pairs])
        return images, labels


def _length(dataset: Any, where: str) -> int:
    try:
        return len(dataset)
    except TypeError:
        raise DatasetFormatError(f"{where}: the dataset has no len(); kdlab needs the number of samples per "
                                 "epoch: give the dataset a __len__") from None


def _batches(loader: DataLoader, where: str) -> int:
    try:
        return len(loader)
    except TypeError:
        raise DatasetFormatError(f"{where}: the DataLoader has no len(); kdlab needs the number of batches "
                                 "per epoch: give its dataset a __len__") from None
