"""``build_data``: from a run config's ``data`` section to the engine's train/val/test batch sources."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor

from kdlab.config.load import explain
from kdlab.config.schema import DataConfig, ErasingConfig, MixConfig, PolicyConfig
from kdlab.core.errors import ConfigError
from kdlab.core.registry import UnknownNameError
from kdlab.core.runtime import Runtime
from kdlab.data.augment import CropFlip
from kdlab.data.batch import BatchSource
from kdlab.data.catalog import DATASETS, DatasetSpec
from kdlab.data.corruption import CorruptedSplits, ImbalanceSpec, NoiseSpec, corrupt_splits
from kdlab.data.facts import DataFacts
from kdlab.data.loader_source import LoaderBatchSource
from kdlab.data.memory import check_fits
from kdlab.data.mixing import MixedBatchSource, mix_transform
from kdlab.data.policies import sample_transform, then
from kdlab.data.raw import RawDataset, Split, channel_stats
from kdlab.data.samples import SampleDataset
from kdlab.data.splits import complement, split_train_val, take_subset
from kdlab.data.tensor_source import TensorBatchSource
from kdlab.data.transforms import (
    Transform,
    crop_flip_transform,
    large_eval_transform,
    large_train_transform,
)

LARGE_IMAGE_SIZE = 224
#: the ``data.name`` a run records for data given from Python (:mod:`kdlab.data.user`)
PYTHON_DATA = "python:"


@dataclass
class DataBundle:
    """The data side of a run: batch sources and what models and methods need to know about the data.

    ``val`` is None when ``val_fraction`` is 0. ``input_shape`` is (C, H, W) of the batches;
    ``train_targets`` are the labels of the training split (after the validation carve and ``subset``),
    indexed like ``Batch.indices`` of ``train`` (the noisy labels under label noise; None for a user's
streamed dataset that does not list them). ``sample_ids`` says whether ``train``'s ``Batch.indices``
identify samples across epochs (not for a user's DataLoader or iterable dataset). ``corruption`` says
    what label noise and imbalance did to the train and validation parts (None when neither is set).
    """

    train: BatchSource
    val: BatchSource | None
    test: BatchSource
    num_classes: int
    classes: list[str]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_targets: Tensor | None
    corruption: CorruptedSplits | None = None
    sample_ids: bool = True

    def facts(self) -> DataFacts:
        """What a model trained on this data needs to know of it (kept as ``RUN_DIR/data.json``)."""
        return DataFacts(self.num_classes, tuple(self.classes), tuple(self.input_shape), tuple(self.mean),
                         tuple(self.std))


def _normalization(
    mean: Sequence[float] | None, std: Sequence[float] | None, spec: DatasetSpec, train: Split
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if (mean is None) != (std is None):
        raise ConfigError("data.mean/std: give both mean and std, or neither")
    if mean is not None:
        return tuple(mean), tuple(std)
    if spec.mean is not None:
        return spec.mean, spec.std
    return channel_stats(train.images)


def _augments(augment: str, spec: DatasetSpec) -> bool:
    return augment == "standard" or (augment == "default" and spec.augment_by_default)


def _crop_flip(spec: DatasetSpec, shape: tuple[int, int, int]) -> CropFlip:
    padding = spec.padding if spec.padding is not None else max(1, min(shape[1:]) // 8)
    return CropFlip(padding, spec.flip)


@dataclass(frozen=True)
class LoaderSettings:
    """How a dataset's splits become batch sources: :func:`build_data`'s options that every dataset
    shares (see its docstring), handed as one value to datasets that build their own bundle."""

    batch_size: int
    device: torch.device
    seed: int
    eval_batch_size: int = 256
    val_fraction: float = 0.1
    split_seed: int = 0
    subset: int | None = None
    augment: str = "default"
    rank: int = 0
    world_size: int = 1
    num_workers: int = 2
    device_resident: str = "auto"
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    drop_last: bool = True
    policy: PolicyConfig | None = None
    random_erasing: ErasingConfig | None = None

    def source_kwargs(self, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
        """The keyword arguments that every batch source of these settings takes, with the resolved
        normalization ``mean``/``std``."""
        return {"mean": mean, "std": std, "device": self.device, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size}


def loader_workers(setting: int | str) -> int:
    """``data.num_workers``: a count, or ``auto``: this node's cores over its ranks, 1 to 8."""
    if setting != "auto":
        return int(setting)
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // ranks))


def build_data(config: DataConfig | Mapping[str, Any], runtime: Runtime | None = None) -> DataBundle:
    """Read the dataset of ``config`` (a run config's ``data`` section, or a mapping validated as one)
    and build its train/val/test batch sources for this process (``runtime``: the device, the DDP rank
    and world size, the seed of shuffles and augmentations; default: CPU, one process, seed 0).

    The validation split is carved from train (``val_fraction``, stratified, seeded by ``split_seed``),
    then ``subset`` caps the training split (stratified, same seed). Batch sizes are global: each rank
    yields ``batch_size // world_size`` samples per training batch. ``augment="default"`` uses the
    dataset's default training augmentation, ``"standard"`` forces it, ``"none"`` disables it.
    ``device_resident="auto"`` keeps decoded uint8 datasets on the device (:class:`TensorBatchSource`)
    and streams large-image folders through a DataLoader (:class:`LoaderBatchSource`); ``"on"``/``"off"``
    force one path (``"on"`` fails for large-image folders). ``image_size`` resizes decoded datasets,
    or sets the crop size of large-image folders (224 by default). ``mean``/``std`` override the
    dataset's normalization. ``policy`` and ``random_erasing`` add per-sample augmentation after the
    crop/flip (:mod:`kdlab.data.policies`); ``mix`` mixes the training batches on the device
    (:mod:`kdlab.data.mixing`). ``options`` go to the reader (e.g. ``num_classes``, ``channels``,
    ``num_train``, ``num_test``, ``data_seed`` for ``synthetic``). ``imbalance`` and then ``noise`` corrupt
    the training and validation parts after the validation carve and ``subset``
    (:mod:`kdlab.data.corruption`); the test part stays clean and balanced.

    Under DDP, training batches are sharded so that one step's per-rank batches together are the
    single-process batch. Evaluation sources are sharded ``rank::world_size`` without padding: every
    sample is evaluated exactly once across ranks, so ranks may yield one sample (and one batch) more or
    less; sum correct/total counts across ranks rather than averaging per-rank means, and avoid
    per-batch collectives during evaluation.
    """
    if not isinstance(config, DataConfig):
        try:
            config = DataConfig.model_validate(dict(config))
        except ValidationError as exc:
            raise ConfigError(explain(exc, "build_data", DataConfig, prefix="data.")) from None
    runtime = runtime or Runtime()
    if config.name.startswith(PYTHON_DATA):
        raise ConfigError(f"data.name: {config.name!r}: the run's data were given from Python and cannot be "
                          "read again from its config; pass them again: "
                          "kdlab.load_run(RUN_DIR).evaluate(dataset)")
    try:
        spec = DATASETS.get(config.name)
    except UnknownNameError as exc:
        raise ConfigError(f"data.name: {exc}") from None
    if config.image_size is not None:
        batch = max(config.batch_size, config.eval_batch_size)
        check_fits(batch, (1, config.image_size, config.image_size), 4,
                   f"data.image_size: a batch of {batch} float images at {config.image_size} px")
    settings = loader_settings(config, runtime)
    if spec.bundle is not None:
        if config.noise is not None or config.imbalance is not None:
            raise ConfigError(f"data: label noise and class imbalance are not supported for {config.name!r}: "
                              "it builds its own domain splits; remove data.noise and data.imbalance")
        if config.policy is not None or config.random_erasing is not None:
            key = "policy" if config.policy is not None else "random_erasing"
            raise ConfigError(f"data.{key}: per-sample policies are not supported for {config.name!r}, which "
                              "trains with DomainBed's augmentation; remove data.policy and "
                              "data.random_erasing")
        check_options(spec.bundle, config, config.root, settings)
        return mixed(spec.bundle(config.root, settings, **config.options), config.mix, settings.seed)
    if spec.needs_root and config.root is None:
        raise ConfigError(f"data.root: dataset {config.name!r} is read from disk: set its root folder")
    check_options(spec.load, config, config.root, image_size=settings.image_size)
    raw = spec.load(config.root, image_size=settings.image_size, **config.options)
    return mixed(bundle_from_raw(raw, spec, settings, config), config.mix, settings.seed)


def loader_settings(config: DataConfig, runtime: Runtime) -> LoaderSettings:
    """The :class:`LoaderSettings` of a data section for this process."""
    return LoaderSettings(
        batch_size=config.batch_size, device=runtime.device, seed=runtime.seed,
        eval_batch_size=config.eval_batch_size, val_fraction=config.val_fraction,
        split_seed=config.split_seed, subset=config.subset, augment=config.augment, rank=runtime.rank,
        world_size=runtime.world_size, num_workers=loader_workers(config.num_workers),
        device_resident=config.device_resident, image_size=config.image_size,
        mean=None if config.mean is None else tuple(config.mean),
        std=None if config.std is None else tuple(config.std),
        policy=config.policy, random_erasing=config.random_erasing,
    )


def mixed(bundle: DataBundle, mix: MixConfig | None, seed: int) -> DataBundle:
    """``bundle`` with its training batches mixed as ``mix`` says (unchanged when it is None)."""
    if mix is None:
        return bundle
    return replace(bundle, train=MixedBatchSource(bundle.train, mix_transform(mix, bundle.num_classes), seed))


def check_options(reader: Callable[..., Any], config: DataConfig, *args: Any, **kwargs: Any) -> None:
    """``data.options`` must be options the dataset's reader takes (checked before it runs)."""
    try:
        inspect.signature(reader).bind(*args, **kwargs, **config.options)
    except TypeError as exc:
        raise ConfigError(f"data.options: {config.name!r} does not take these options ({exc})") from None


def bundle_from_raw(raw: RawDataset, spec: DatasetSpec, s: LoaderSettings, config: DataConfig,
                    val_positions: Tensor | None = None) -> DataBundle:
    """:func:`build_data` for a dataset read as one train/test pair (every dataset but the domain sets).

    The validation part is carved from ``raw.train`` (``val_fraction``), or is the given ``val_positions``
    of ``raw.train``; then ``subset``, imbalance and label noise (``config``) apply to the rest."""
    if val_positions is None:
        train_pos, val_pos = split_train_val(raw.train.targets, s.val_fraction, s.split_seed)
    else:
        train_pos, val_pos = complement(len(raw.train), val_positions), val_positions
    train_pos = train_pos[take_subset(raw.train.targets[train_pos], s.subset, s.split_seed)]
    noise = None if config.noise is None else NoiseSpec(**config.noise.model_dump())
    imbalance = None if config.imbalance is None else ImbalanceSpec(**config.imbalance.model_dump())
    corruption = None
    if noise is not None or imbalance is not None:
        corruption = corrupt_splits(raw.train.targets, train_pos, val_pos, list(raw.classes), noise,
                                    imbalance)
        train_pos, val_pos = corruption.train_positions, corruption.val_positions
    train = raw.train.select(train_pos)
    val = raw.train.select(val_pos) if val_pos is not None else None
    if corruption is not None:
        train = replace(train, targets=corruption.train_targets)
        val = replace(val, targets=corruption.val_targets) if val is not None else None
    if s.drop_last and len(train) < s.batch_size:
        raise ConfigError(f"data.batch_size: the training split has {len(train)} samples, fewer than "
                          f"batch_size {s.batch_size}")

    decoded = train.decoded
    resident = decoded if s.device_resident == "auto" else s.device_resident == "on"
    if resident and not decoded:
        raise ConfigError(
            f"device_resident='on' needs decoded images, but {config.root} holds large images read lazily;"
            " use 'auto' or 'off', or set image_size <= 64 to decode them up front"
        )
    norm_mean, norm_std = _normalization(s.mean, s.std, spec, train)
    size = s.image_size or LARGE_IMAGE_SIZE
    shape = tuple(train.images.shape[1:]) if decoded else (3, size, size)
    if len(norm_mean) != shape[0] or len(norm_std) != shape[0]:
        raise ConfigError(f"data.mean/std: mean/std have {len(norm_mean)}/{len(norm_std)} values for "
                          f"{shape[0]} channels")
    common = s.source_kwargs(norm_mean, norm_std)
    train_args = {"batch_size": s.batch_size, "shuffle": True, "drop_last": s.drop_last, **common}
    eval_args = {"batch_size": s.eval_batch_size, "shuffle": False, **common}

    augmenting = _augments(s.augment, spec)
    per_sample = sample_transform(s.policy, s.random_erasing, norm_mean)
    if resident:
        crop = _crop_flip(spec, shape) if augmenting else None
        train_src: BatchSource = TensorBatchSource(train.images, train.targets, augment=crop,
                                                   policy=per_sample, **train_args)
        val_src = None if val is None else TensorBatchSource(val.images, val.targets, **eval_args)
        test_src: BatchSource = TensorBatchSource(raw.test.images, raw.test.targets, **eval_args)
    else:
        if decoded:
            train_tf = crop_flip_transform(_crop_flip(spec, shape), *shape[1:]) if augmenting else None
            eval_tf = None
        else:
            eval_tf = large_eval_transform(size)
            train_tf = large_train_transform(size) if augmenting else eval_tf
        train_tf = then(train_tf, per_sample)

        def loader(split: Split, transform: Transform | None, args: dict[str, Any]) -> LoaderBatchSource:
            return LoaderBatchSource(SampleDataset(split, transform), num_workers=s.num_workers, **args)

        train_src = loader(train, train_tf, train_args)
        val_src = None if val is None else loader(val, eval_tf, eval_args)
        test_src = loader(raw.test, eval_tf, eval_args)

    return DataBundle(
        train=train_src,
        val=val_src,
        test=test_src,
        num_classes=len(raw.classes),
        classes=list(raw.classes),
        input_shape=shape,
        mean=norm_mean,
        std=norm_std,
        train_targets=train.targets.clone(),
        corruption=corruption,
    )
