"""A user's own data (a ``Dataset``, ``DataLoader`` or ImageFolder folder per split) as a run's bundle.

Two paths, chosen per run:

- **Decoded up front** (the device-resident fast path, as for kdlab's own small datasets): when every
  split is a map-style ``Dataset`` with no ``transform`` of its own whose images are uint8 (tensors or
  PIL) of one size with sides of at most :data:`RESIDENT_SIDE` px. The images are read once into one
  uint8 tensor; kdlab's augmentation (``data.augment``, ``data.policy``, ``data.random_erasing``), the
  validation carve, ``data.subset``, label noise and imbalance apply as to a registered dataset, and
  ``data.mean``/``std`` default to the training images' statistics.
- **Streamed** (:class:`~kdlab.data.stream_source.StreamBatchSource`): anything else. The user's
  transforms run per sample; kdlab adds no per-sample augmentation of its own. A map-style training
  ``Dataset`` still gets kdlab's seeded order, validation carve and ``data.subset``; a ``DataLoader`` or
  iterable dataset is read as given. ``data.mean``/``std`` default to the statistics of up to
  :data:`STATS_SAMPLES` training images.

Either way images are uint8 (0..255) or float (0..1): kdlab normalizes them itself. ``data.mix``
(mixup/cutmix) applies on both paths. ``data.device_resident`` forces a path (``on`` fails when the data
cannot be decoded up front). A folder given for a split is read with torchvision's ``ImageFolder`` (one
subfolder of images per class); a dataset root with ``train/`` and ``test/`` folders is better given as
the registered ``imagefolder`` dataset, which also streams large images with kdlab's crops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from torchvision.datasets import ImageFolder

from kdlab.config.schema import DataConfig
from kdlab.core.errors import ConfigError
from kdlab.core.runtime import Runtime
from kdlab.data.batch import BatchSource
from kdlab.data.build import (
    PYTHON_DATA,
    DataBundle,
    LoaderSettings,
    bundle_from_raw,
    loader_settings,
    mixed,
)
from kdlab.data.catalog import DatasetSpec
from kdlab.data.facts import DataFacts
from kdlab.data.memory import check_fits
from kdlab.data.raw import RawDataset, Split, check_labels, resize_dataset, resize_images
from kdlab.data.splits import split_train_val, take_subset
from kdlab.data.stream_source import SeededSamples, StreamBatchSource, unpack_batch
from kdlab.data.tensor_source import TensorBatchSource
from kdlab.data.user_samples import class_id, image_tensor, split_sample

DataInput: TypeAlias = Dataset | DataLoader | str | os.PathLike
RESIDENT_SIDE = 64
STATS_SAMPLES = 1024
#: seeds of torch's generator under which a dataset's first sample must be the same to be decoded once
RANDOMNESS_SEEDS = (1, 2, 3, 4)
#: a user's decoded dataset as a registered one would be: statistics from its images, no augmentation by
#: default (its reader is never called: the images were read here)
USER_SPEC = DatasetSpec(load=RawDataset, mean=None, std=None, augment_by_default=False)


@dataclass(frozen=True)
class UserData:
    """A user's splits: ``train`` and ``test`` (required), ``val`` (default: carved from a ``Dataset``'s
    train split by ``data.val_fraction``; none for a ``DataLoader``), and ``classes``: the class names,
    or their count (default: the training dataset's ``classes`` attribute, else the largest label + 1)."""

    train: DataInput
    test: DataInput
    val: DataInput | None = None
    classes: Sequence[str] | int | None = None

    def name(self) -> str:
        """What the run's ``data.name`` records: ``python:`` and the training data's type."""
        return f"{PYTHON_DATA}{type(self.train).__name__}"


def build_user_data(data: UserData, config: DataConfig, runtime: Runtime | None = None) -> DataBundle:
    """The bundle of ``data`` under ``config`` (its batch sizes, augmentation, split and device settings)."""
    runtime = runtime or Runtime()
    settings = loader_settings(config, runtime)
    splits = {"train": _opened(data.train), "val": _opened(data.val), "test": _opened(data.test)}
    decoded = None if config.device_resident == "off" else _decode_all(splits, config.device_resident == "on")
    if decoded is not None:
        raw, val_positions = decoded
        classes = _class_names(data.classes, splits["train"], raw.train.targets)
        raw = resize_dataset(RawDataset(raw.train, raw.test, classes), config.image_size)
        for part, where in ((raw.train, "train"), (raw.test, "test")):
            check_labels(part.targets, len(classes), f"data ({where})")
        bundle = bundle_from_raw(raw, USER_SPEC, settings, config, val_positions=val_positions)
    else:
        bundle = _streamed(splits, data.classes, config, settings)
    return mixed(bundle, config.mix, settings.seed)


def _opened(split: DataInput | None) -> Dataset | DataLoader | None:
    if isinstance(split, str | os.PathLike):
        folder = Path(split)
        if not folder.is_dir():
            raise ConfigError(f"data: {folder} is not a folder; give an ImageFolder tree (one subfolder of "
                              "images per class), a Dataset or a DataLoader")
        return ImageFolder(str(folder))
    if split is not None and not isinstance(split, Dataset | DataLoader):
        raise ConfigError(f"data: a split is a {type(split).__name__}; expected a torch Dataset, a "
                          "DataLoader or an ImageFolder path")
    return split


def _resident_candidate(split: Dataset | DataLoader | None) -> bool:
    return split is None or (isinstance(split, Dataset) and not isinstance(split, IterableDataset)
                             and not _has_transform(split))


def _has_transform(dataset: Dataset) -> bool:
    """Whether ``dataset``, or a dataset it wraps (``Subset``, ``ConcatDataset``), has a transform set."""
    if getattr(dataset, "transform", None) is not None or getattr(dataset, "transforms", None) is not None:
        return True
    inner = [getattr(dataset, "dataset", None), *getattr(dataset, "datasets", ())]
    return any(_has_transform(part) for part in inner if isinstance(part, Dataset))


def _decode_all(splits: dict[str, Any], forced: bool) -> tuple[RawDataset, Tensor | None] | None:
    """Every split read into uint8 tensors (train and val joined, with val's positions), or None when the
    data is not for the fast path (see the module docstring); ``forced`` turns None into one line."""
    why = next((f"data ({name}) is a DataLoader, an iterable dataset or has its own transform"
                for name, split in splits.items() if not _resident_candidate(split)), None)
    parts: dict[str, Split] = {}
    if why is None:
        for name, split in splits.items():
            if split is None:
                continue
            images, why = _read_images(split, f"data ({name})")
            if images is None:
                break
            parts[name] = images
    if why is not None:
        if forced:
            raise ConfigError(f"data.device_resident: 'on' needs data that can be decoded up front, but "
                              f"{why}; use 'auto' or 'off'")
        return None
    train, val = parts["train"], parts.get("val")
    if val is None:
        return RawDataset(train, parts["test"], []), None
    joined = Split(torch.cat([train.targets, val.targets]), images=torch.cat([train.images, val.images]))
    return RawDataset(joined, parts["test"], []), torch.arange(len(train), len(joined))


def _read_images(dataset: Dataset, where: str) -> tuple[Split | None, str | None]:
    """The dataset as one uint8 tensor, or None and why it cannot be: not uint8, mixed or large sizes, or
    random (its first sample differs under :data:`RANDOMNESS_SEEDS`: a random transform in
    ``__getitem__``)."""
    if not len(dataset):
        raise ConfigError(f"{where}: the dataset is empty")
    seeded = SeededSamples(dataset, where)
    first, *others = (seeded[(0, seed)][0] for seed in RANDOMNESS_SEEDS)
    if first.dtype != torch.uint8 or max(first.shape[1:]) > RESIDENT_SIDE:
        return None, (f"{where} has {first.dtype} images of {tuple(first.shape)} (uint8 ones up to "
                      f"{RESIDENT_SIDE} px are decoded up front)")
    if any(other.shape != first.shape or not torch.equal(other, first) for other in others):
        return None, f"{where} draws its samples at random"
    check_fits(len(dataset), tuple(first.shape), 1, f"{where}: {len(dataset)} images")
    images = torch.empty(len(dataset), *first.shape, dtype=torch.uint8)
    labels = torch.empty(len(dataset), dtype=torch.int64)
    for index in range(len(dataset)):
        image, label = split_sample(dataset[index], where)
        image = image_tensor(image, where)
        if image.shape != first.shape or image.dtype != torch.uint8:
            return None, f"{where} has images of different sizes or types"
        images[index], labels[index] = image, class_id(label, where)
    return Split(labels, images=images), None


def _class_names(classes: Sequence[str] | int | None, train: Any, targets: Tensor | None) -> list[str]:
    if classes is None:
        classes = getattr(train, "classes", None) or getattr(getattr(train, "dataset", None), "classes", None)
    if classes is None:
        if targets is None:
            raise ConfigError("data: kdlab cannot tell the number of classes of a streamed dataset; give "
                              "classes= (their names, or their count)")
        classes = int(targets.max()) + 1 if len(targets) else 0
    if isinstance(classes, int):
        return [str(i) for i in range(classes)]
    return [str(name) for name in classes]


def _dataset_targets(dataset: Dataset) -> Tensor | None:
    targets = getattr(dataset, "targets", None)
    return None if targets is None else torch.as_tensor(targets).to(torch.int64)


def _streamed(splits: dict[str, Any], classes: Sequence[str] | int | None, config: DataConfig,
              s: LoaderSettings) -> DataBundle:
    for key in ("noise", "imbalance", "policy", "random_erasing"):
        if getattr(config, key) is not None:
            raise ConfigError(f"data.{key}: kdlab applies it to data it decodes up front (uint8 images of "
                              f"one size up to {RESIDENT_SIDE} px, no transform of the dataset's own); put "
                              "it in your dataset's transform instead, or remove it")
    train, val, test = splits["train"], splits["val"], splits["test"]
    targets = _dataset_targets(train) if isinstance(train, Dataset) else None
    names = _class_names(classes, train if not isinstance(train, DataLoader) else train.dataset, targets)
    if isinstance(train, Dataset) and not isinstance(train, IterableDataset):
        train, val, targets = _carve(train, val, targets, config)
    elif config.subset is not None:
        raise ConfigError("data.subset: kdlab subsets a map-style Dataset; a DataLoader or iterable dataset "
                          "is read as given")
    mean, std = _statistics(config, train)
    common = {"num_classes": len(names), "mean": mean, "std": std, "device": s.device}

    train_src = _stream_source(train, "train", True, s, common)
    test_src = _stream_source(test, "test", False, s, common)
    val_src = None if val is None else _stream_source(val, "val", False, s, common)
    shape = tuple(unpack_batch(next(iter(test_src.batches)), "data (test)")[0].shape[1:])
    return DataBundle(train=train_src, val=val_src,
                      test=test_src, num_classes=len(names), classes=names,
                      input_shape=shape, mean=mean, std=std, train_targets=targets,
                      sample_ids=train_src.indexed)


def _stream_source(split: Dataset | DataLoader, name: str, training: bool, s: LoaderSettings,
                   common: dict[str, Any]) -> StreamBatchSource:
    """The streamed source of one split: a DataLoader as given, a Dataset in kdlab's seeded order."""
    where = f"data ({name})"
    if isinstance(split, DataLoader):
        if s.world_size > 1 and not hasattr(split.sampler, "set_epoch"):
            raise ConfigError(f"{where}: under DDP a DataLoader needs a DistributedSampler; or pass the "
                              "Dataset and let kdlab shard it")
        return StreamBatchSource.from_loader(split, where=where, **common)
    batch = s.batch_size if training else s.eval_batch_size
    return StreamBatchSource.from_dataset(
        split, batch_size=batch, shuffle=training, drop_last=training and s.drop_last, seed=s.seed,
        rank=s.rank, world_size=s.world_size, num_workers=s.num_workers, where=where, **common)


def _carve(train: Dataset, val: Dataset | DataLoader | None, targets: Tensor | None, config: DataConfig
           ) -> tuple[Dataset, Dataset | DataLoader | None, Tensor | None]:
    """The validation carve (when no val split is given) and ``data.subset`` of a map-style dataset."""
    labels = targets if targets is not None else torch.zeros(len(train), dtype=torch.int64)
    keep = torch.arange(len(train))
    if val is None and config.val_fraction > 0:
        keep, val_positions = split_train_val(labels, config.val_fraction, config.split_seed)
        val = Subset(train, val_positions.tolist())
    keep = keep[take_subset(labels[keep], config.subset, config.split_seed)]
    if len(keep) == len(train):
        return train, val, targets
    return Subset(train, keep.tolist()), val, None if targets is None else targets[keep]


def _statistics(config: DataConfig, train: Dataset | DataLoader
                ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.mean``/``std``, else the channel statistics of up to :data:`STATS_SAMPLES` training images
    (evenly spread over a map-style dataset, the first ones of a DataLoader or iterable dataset)."""
    if (config.mean is None) != (config.std is None):
        raise ConfigError("data.mean/std: give both mean and std, or neither")
    if config.mean is not None:
        return tuple(config.mean), tuple(config.std)
    total = squares = None
    count = 0
    for image in _sample_images(train):
        scaled = image.double() / 255 if image.dtype == torch.uint8 else image.double()
        sums, sq = scaled.sum(dim=(1, 2)), scaled.square().sum(dim=(1, 2))
        total, squares = (sums, sq) if total is None else (total + sums, squares + sq)
        count += scaled[0].numel()
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in std)


def _sample_images(train: Dataset | DataLoader) -> Iterator[Tensor]:
    where = "data (train)"
    if isinstance(train, DataLoader):
        seen = 0
        for batch in train:
            images = unpack_batch(batch, where)[0]
            yield from images[: STATS_SAMPLES - seen]
            seen += len(images)
            if seen >= STATS_SAMPLES:
                return
    elif isinstance(train, IterableDataset):
        for _, sample in zip(range(STATS_SAMPLES), train, strict=False):
            yield image_tensor(split_sample(sample, where)[0], where)
    else:
        seeded = SeededSamples(train, where)
        step = max(1, len(train) // STATS_SAMPLES)
        for index in range(0, len(train), step)[:STATS_SAMPLES]:
            yield seeded[(index, index)][0]


def evaluation_source(split: DataInput, facts: DataFacts, config: DataConfig,
                      device: torch.device | str = "cpu") -> BatchSource:
    """One split of a user's data for evaluating a model of a finished run: normalized with the run's
    statistics (``facts``), its labels checked against the run's classes, and (decoded up front) resized
    to the run's input size when the run resized its own images (``data.image_size``)."""
    opened = _opened(split)
    device = torch.device(device)
    where = "data"
    if _resident_candidate(opened) and config.device_resident != "off":
        part, _ = _read_images(opened, where)
        if part is not None:
            check_labels(part.targets, facts.num_classes, where)
            images = resize_images(part.images, facts.input_shape[-1]) if config.image_size else part.images
            if tuple(images.shape[1:]) != tuple(facts.input_shape):
                raise ConfigError(f"{where}: images of {tuple(images.shape[1:])}, but the run's model takes "
                                  f"{tuple(facts.input_shape)}")
            return TensorBatchSource(images, part.targets, batch_size=config.eval_batch_size, shuffle=False,
                                     mean=facts.mean, std=facts.std, device=device)
    common = {"num_classes": facts.num_classes, "mean": facts.mean, "std": facts.std, "device": device}
    return _stream_source(opened, "evaluated", False, loader_settings(config, Runtime(device)), common)
