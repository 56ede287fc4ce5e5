"""What the engine consumes: batches already on the training device."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor


class Batch(NamedTuple):
    """One training or evaluation batch, on the training device.

    ``inputs`` are float images normalized with the dataset's mean/std, ``targets`` are int64 class
    ids and ``indices`` are int64 positions in the split (methods such as CRD key memories by them).
    ``teacher`` holds the teacher's outputs for these inputs when a replayable teacher cache supplies
    them (``"logits"``, and ``"feature0"``, ``"feature1"``, ... for tapped features), else None.
    ``soft_targets`` are the ``[B, num_classes]`` label distributions of a mixed batch (mixup/cutmix,
    :mod:`kdlab.data.mixing`), else None; ``targets`` stay each sample's own class id.
    """

    inputs: Tensor
    targets: Tensor
    indices: Tensor
    teacher: dict[str, Tensor] | None = None
    soft_targets: Tensor | None = None

    @property
    def label_targets(self) -> Tensor:
        """What a CE term on the labels is taken against: the mixed distributions, else the class ids."""
        return self.soft_targets if self.soft_targets is not None else self.targets


class BatchSource(Protocol):
    """An epoch-aware iterable of :class:`Batch` for one rank.

    ``len()`` is the number of batches this rank yields per epoch; ``num_samples`` is the size of the
    whole split (all ranks). ``set_epoch`` must be called before each epoch so that order and
    augmentation are a pure function of (seed, epoch), which makes resume exact.
    """

    num_samples: int

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[Batch]: ...


class ReplaySlab(Protocol):
    """One epoch of a replayable teacher cache (:class:`kdlab.teacher_cache.EpochSlab`)."""

    def augment_for(self, indices: Tensor) -> Tensor: ...

    def teacher(self, indices: Tensor) -> dict[str, Tensor]: ...


class Replay(Protocol):
    """What a batch source reads a teacher cache through: the slab of a training epoch."""

    device: torch.device

    def load(self, epoch: int) -> ReplaySlab: ...


@runtime_checkable
class ReplayableSource(Protocol):
    """A training source that a teacher cache can be filled from and replayed into.

    ``augment_spec`` describes its random augmentation as the cache records it; ``draw_by_sample`` is one
    epoch's augmentation draws indexed by sample id (``[num_samples, width]`` int32); ``views`` yields
    batches of samples ``indices`` augmented with given draws, normalized, on the device; ``samples``
    is what identifies the split's samples (its decoded uint8 images, or its file paths); and after
    ``set_replay`` the source takes each epoch's draws and teacher outputs from the cache.
    """

    num_samples: int

    def augment_spec(self) -> dict[str, object]: ...

    def draw_by_sample(self, generator: torch.Generator) -> Tensor: ...

    def views(self, indices: Tensor, draws: Tensor, batch_size: int) -> Iterator[Tensor]: ...

    def samples(self) -> Tensor | list[str]: ...

    def set_replay(self, replay: Replay) -> None: ...
