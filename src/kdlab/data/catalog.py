"""The dataset registry: each name maps to its reader and its defaults (normalization, augmentation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdlab.core.registry import Registry
from kdlab.data.cifar import load_cifar10, load_cifar100
from kdlab.data.digits import load_digits
from kdlab.data.imagefolder import load_imagefolder
from kdlab.data.mnist import load_fashion_mnist, load_mnist
from kdlab.data.raw import RawDataset
from kdlab.data.synthetic import load_synthetic

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    ``load(root, *, image_size, **options)`` returns a :class:`~kdlab.data.raw.RawDataset`. ``mean`` and
    ``std`` are the default normalization (None: computed from the training images). The standard
    augmentation of decoded images is a random crop after ``padding`` px of zero padding (None: an
    eighth of the image side) plus a horizontal flip when ``flip``; large lazy images use
    RandomResizedCrop + flip. ``augment_by_default`` says whether ``augment="default"`` applies it.
    ``bundle``, when set, builds the whole :class:`~kdlab.data.build.DataBundle` itself from
    ``build_data``'s arguments (domain datasets: see :mod:`kdlab.data.domains`).
    """

    load: Callable[..., RawDataset]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    augment_by_default: bool
    padding: int | None = None
    flip: bool = True
    needs_root: bool = True
    bundle: Callable[..., Any] | None = None


DATASETS: Registry[DatasetSpec] = Registry("dataset")

DATASETS.register("cifar10")(
    DatasetSpec(load_cifar10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment_by_default=True)
)
DATASETS.register("cifar100")(
    DatasetSpec(load_cifar100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), augment_by_default=True)
)
DATASETS.register("mnist")(
    DatasetSpec(load_mnist, (0.1307,), (0.3081,), augment_by_default=False, padding=2, flip=False)
)
DATASETS.register("fashion_mnist")(
    DatasetSpec(load_fashion_mnist, (0.2860,), (0.3530,), augment_by_default=False, padding=2, flip=False)
)
DATASETS.register("imagefolder")(
    DatasetSpec(load_imagefolder, IMAGENET_MEAN, IMAGENET_STD, augment_by_default=True)
)
DATASETS.register("digits")(
    DatasetSpec(
        load_digits, (0.3053,), (0.3758,), augment_by_default=False, padding=2, flip=False, needs_root=False
    )
)
DATASETS.register("synthetic")(
    DatasetSpec(load_synthetic, None, None, augment_by_default=False, needs_root=False)
)


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return DATASETS.names()
