"""What the engine consumes: batches already on the training device."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

import torch
from torch import Tensor


class Batch(NamedTuple):
    """One training or evaluation batch, on the training device.

    ``inputs`` are float images normalized with the dataset's mean/std, ``targets`` are int64 class
    ids and ``indices`` are int64 positions in the split (methods such as CRD key memories by them).
    ``teacher`` holds the teacher's outputs for these inputs when a replayable teacher cache supplies
    them (``"logits"``, and ``"feature0"``, ``"feature1"``, ... for tapped features), else None.
    """

    inputs: Tensor
    targets: Tensor
    indices: Tensor
    teacher: dict[str, Tensor] | None = None


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
