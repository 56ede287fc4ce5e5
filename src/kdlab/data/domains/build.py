"""The data of one leave-domains-out run: train on the source domains, validate on their held-out
parts, test on the target domain(s).

- **train**: the "in" parts (1 - ``val_fraction``) of the source domains, in domain-balanced batches
  (:mod:`kdlab.data.domains.balanced`; ``batch_size`` is the total over domains).
- **val**: the source domains' "out" parts pooled: DomainBed's *training-domain validation*. The target
  domain is never used for selection. (DomainBed averages per-domain accuracies; the pooled accuracy
  weighs domains by their held-out size.)
- **test**: the target domains' "in" parts (``target_split="in"``, what DomainBed reports) or all of
  their samples (``"all"``, what the WAKD code reports).

Dataset options (``data.options``): ``test_domains`` (a list, or one domain; by index or short name),
``target_split``, ``domain_size`` (a stratified cap per domain; for quick runs), ``data_seed`` (how the
MNIST variants are built and capped; the in/out split follows ``split_seed``) and ``crop_scale``.
Folder datasets train with DomainBed's augmentation (RandomResizedCrop(scale ``crop_scale``, default
0.7-1; WAKD's KD runs use torchvision's 0.08-1), horizontal flip, ColorJitter 0.3, RandomGrayscale 0.1)
and evaluate on images resized to ``image_size`` (224); with ``image_size <= 64`` they are decoded up
front and augmented on the device with a random crop (zero padding of an eighth of the side) and a
horizontal flip, unless ``augment: none``. The MNIST variants are not augmented, as in DomainBed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from torchvision.transforms import v2

from kdlab.core.errors import ConfigError
from kdlab.data.augment import CropFlip
from kdlab.data.build import DataBundle, LoaderSettings
from kdlab.data.domains.balanced import DomainBalancedSource
from kdlab.data.domains.catalog import DOMAIN_SETS, DomainSet
from kdlab.data.domains.folders import read_domain_folders
from kdlab.data.domains.mnist import colored_mnist, rotated_mnist
from kdlab.data.domains.splits import concat, split_domain
from kdlab.data.loader_source import LoaderBatchSource
from kdlab.data.raw import Split
from kdlab.data.samples import SampleDataset
from kdlab.data.splits import take_subset
from kdlab.data.tensor_source import TensorBatchSource
from kdlab.data.transforms import Transform

LARGE_IMAGE_SIZE = 224
MNIST_BUILDERS = {"rotated_mnist": rotated_mnist, "colored_mnist": colored_mnist}


def domainbed_train_transform(size: int, crop_scale: tuple[float, float] = (0.7, 1.0)) -> Transform:
    """DomainBed's training augmentation for image folders, on uint8 tensors."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.3, 0.3, 0.3, 0.3),
        v2.RandomGrayscale(p=0.1),
    ])


def domainbed_eval_transform(size: int) -> Transform:
    """DomainBed's evaluation transform: a plain resize to ``size`` x ``size``."""
    return v2.Resize((size, size), antialias=True)


def test_domain_indices(spec: DomainSet, test_domains: Any) -> list[int]:
    chosen = test_domains if isinstance(test_domains, list | tuple) else [test_domains]
    if not chosen:
        raise ConfigError(f"{spec.title}: data.options.test_domains is empty; name at least one domain")
    indices = sorted({spec.domain_index(d) for d in chosen})
    if len(indices) == len(spec.domains):
        raise ConfigError(f"{spec.title}: every domain is a test domain; leave at least one to train on")
    return indices


def read_domains(name: str, root: str | Path, *, image_size: int | None, data_seed: int,
                 domain_size: int | None) -> tuple[list[Split], list[str]]:
    """Every domain of dataset ``name`` as a :class:`Split`, and the class names."""
    spec = DOMAIN_SETS.get(name)
    if spec.kind == "mnist":
        parts = MNIST_BUILDERS[name](root, data_seed=data_seed, domain_size=domain_size)
        return parts, [str(i) for i in range(spec.num_classes)]
    parts, classes = read_domain_folders(root, spec, image_size)
    if domain_size is not None:
        parts = [p.select(take_subset(p.targets, domain_size, data_seed)) for p in parts]
    return parts, classes


def build_domain_data(
    name: str,
    root: str | Path | None,
    s: LoaderSettings,
    *,
    test_domains: Any = 0,
    target_split: Literal["in", "all"] = "in",
    domain_size: int | None = None,
    data_seed: int = 0,
    crop_scale: tuple[float, float] = (0.7, 1.0),
) -> DataBundle:
    """The :class:`DataBundle` of DG dataset ``name`` with ``test_domains`` held out (see module doc)."""
    spec = DOMAIN_SETS.get(name)
    if root is None:
        raise ConfigError(f"dataset {name!r} is read from disk: pass its root folder (data.root)")
    if s.subset is not None:
        raise ConfigError("data.subset does not apply to domain datasets; use data.options.domain_size")
    if target_split not in ("in", "all"):
        raise ConfigError(f"data.options.target_split: target_split must be 'in' or 'all'; got "
                          f"{target_split!r}")
    if spec.kind == "mnist" and s.image_size is not None:
        raise ConfigError(f"{spec.title} images are 28x28; leave data.image_size unset")
    targets_idx = test_domain_indices(spec, test_domains)
    parts, classes = read_domains(name, root, image_size=s.image_size, data_seed=data_seed,
                                  domain_size=domain_size)
    splits = [split_domain(p.targets, s.val_fraction, s.split_seed, i) for i, p in enumerate(parts)]
    sources = [i for i in range(len(parts)) if i not in targets_idx]
    train_parts = [parts[i].select(splits[i].inside) for i in sources]
    train = concat(train_parts)
    val = concat([parts[i].select(splits[i].out) for i in sources]) if s.val_fraction > 0 else None
    test = concat([parts[i] if target_split == "all" else parts[i].select(splits[i].inside)
                   for i in targets_idx])

    norm_mean = s.mean if s.mean is not None else spec.mean
    norm_std = s.std if s.std is not None else spec.std
    size = s.image_size or LARGE_IMAGE_SIZE
    shape = tuple(train.images.shape[1:]) if train.decoded else (3, size, size)
    if train.decoded and s.device_resident == "off":
        raise ConfigError("data.device_resident: device_resident='off' is not supported for decoded domain "
                          "datasets; use 'auto'")
    if not train.decoded and s.device_resident == "on":
        raise ConfigError("data.device_resident: device_resident='on' needs decoded images; set image_size "
                          "<= 64 or use 'auto'")
    train_tf = None
    eval_tf = None
    crop = None
    if not train.decoded:
        eval_tf = domainbed_eval_transform(size)
        train_tf = eval_tf if s.augment == "none" else domainbed_train_transform(size, crop_scale)
    elif spec.kind == "folder" and s.augment != "none":
        crop = CropFlip(max(1, min(shape[1:]) // 8), flip=True)
    elif s.augment == "standard":
        raise ConfigError(f"data.augment: {spec.title} is not augmented (as in DomainBed: flips and crops "
                          "would change its domains); use 'default' or 'none'")
    common = s.source_kwargs(norm_mean, norm_std)
    train_src = DomainBalancedSource(train, [len(p) for p in train_parts], batch_size=s.batch_size,
                                     transform=train_tf, augment=crop, num_workers=s.num_workers, **common)

    def eval_source(split: Split):
        if split.decoded:
            return TensorBatchSource(split.images, split.targets, batch_size=s.eval_batch_size, shuffle=False,
                                     **common)
        return LoaderBatchSource(SampleDataset(split, eval_tf), batch_size=s.eval_batch_size, shuffle=False,
                                 num_workers=s.num_workers, **common)

    return DataBundle(
        train=train_src,
        val=eval_source(val) if val is not None and len(val) else None,
        test=eval_source(test),
        num_classes=len(classes),
        classes=classes,
        input_shape=shape,
        mean=norm_mean,
        std=norm_std,
        train_targets=train.targets.clone(),
    )
