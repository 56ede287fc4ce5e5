"""Reading a cache back during training: one epoch's augmentation draws and teacher outputs.

The training order stays the run's own (seeded by ``train.seed``); only the augmentation of sample ``i``
in epoch ``e`` and the teacher's outputs for it are read from the cache, at cached epoch ``e`` (or
``e mod E`` with ``cycle``). So one cache serves any student, seed, batch size and number of ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdlab.teacher_cache.layout import CacheError, CacheLayout

DEVICE_SLAB_LIMIT = 2 * 2**30


def topk_to_logits(values: Tensor, indices: Tensor, rest_logsumexp: Tensor, num_classes: int) -> Tensor:
    """Full logits from the top-k logits, spreading the other classes' mass uniformly.

    The ``C - k`` other classes all get ``rest_logsumexp - log(C - k)``, so at temperature 1 the top-k
    probabilities and the total mass of the rest are exact; at other temperatures this is the
    uniform-rest approximation.
    """
    fill = rest_logsumexp.float() - math.log(num_classes - values.shape[1])
    logits = fill[:, None].expand(len(fill), num_classes).clone()
    return logits.scatter_(1, indices.long(), values.float())


@dataclass
class EpochSlab:
    """One cached epoch: augmentation draws ``[N, P]`` and output arrays, gathered per batch."""

    augment: Tensor
    arrays: dict[str, Tensor]
    num_classes: int
    device: torch.device
    members: int = 0

    def augment_for(self, indices: Tensor) -> Tensor:
        return self.augment.index_select(0, indices.to(self.augment.device))

    def teacher(self, indices: Tensor) -> dict[str, Tensor]:
        """The teacher's outputs for ``indices`` on the training device, as float32: ``logits`` (B, C), or
        for an ensemble ``members`` (M, B, C)."""
        got = {name: array.index_select(0, indices.to(array.device)).to(self.device, non_blocking=True)
               for name, array in self.arrays.items()}
        if self.members:
            out = {"members": got.pop("logits").float().transpose(0, 1)}
        elif "logits" in got:
            out = {"logits": got.pop("logits").float()}
        else:
            out = {"logits": topk_to_logits(got.pop("topk_values"), got.pop("topk_indices"),
                                            got.pop("rest_logsumexp"), self.num_classes)}
        out.update({name: value.float() for name, value in got.items()})
        return out


class TeacherCacheReplay:
    """A finished cache, checked against the run that uses it, serving :class:`EpochSlab` per epoch."""

    def __init__(self, root: str | Path, device: torch.device, *, cycle: bool = True,
                 features: bool = False) -> None:
        self.layout = CacheLayout(Path(root))
        self.meta = self.layout.read_meta()
        missing = self.layout.missing_parts(self.meta)
        if missing:
            raise CacheError(f"teacher_cache.path: {root} is incomplete ({missing} parts missing); "
                             "finish it by running kdlab cache-teacher CONFIG again")
        self.arrays = {name: array for name, array in self.layout.open_arrays(self.meta).items()
                       if features or not name.startswith("feature")}
        self.device = device
        self.cycle = cycle
        self._slab: tuple[int, EpochSlab] | None = None

    @property
    def epochs(self) -> int:
        return self.meta["epochs"]

    def check(self, expected: dict[str, Any]) -> None:
        """Refuse the cache when anything it was made from differs from ``expected``."""
        for key, value in expected.items():
            if self.meta.get(key) != value:
                what = key.replace("_", " ")
                raise CacheError(
                    f"teacher_cache.path: {self.layout.root} was made with a different {what}"
                    f" ({_short(self.meta.get(key))}, this run has {_short(value)}); rebuild it with "
                    "kdlab cache-teacher CONFIG or point teacher_cache.path elsewhere")

    def describe(self, epochs_trained: float) -> dict[str, Any]:
        """What the run's summary records about the cache it replayed."""
        return {"path": str(self.layout.root), "epochs": self.epochs, "outputs": self.meta["outputs"],
                "topk": self.meta["topk"], "cycled": epochs_trained > self.epochs}

    def require(self, epochs: int) -> None:
        """Refuse a run of ``epochs`` data epochs that is longer than the cache unless it may cycle."""
        if epochs > self.epochs and not self.cycle:
            raise CacheError(f"teacher_cache.epochs: the cache holds {self.epochs} epochs and the run needs "
                             f"{epochs}; set teacher_cache.cycle: true or cache more epochs")

    def cached_epoch(self, epoch: int) -> int:
        self.require(epoch + 1)
        return epoch % self.epochs

    def load(self, epoch: int) -> EpochSlab:
        """The slab of training epoch ``epoch``, read once and kept until another epoch is asked for."""
        cached = self.cached_epoch(epoch)
        if self._slab is None or self._slab[0] != cached:
            outputs = {name: torch.from_numpy(np.array(array[cached]))
                       for name, array in self.arrays.items() if name != "augment"}
            if sum(t.numel() * t.element_size() for t in outputs.values()) <= DEVICE_SLAB_LIMIT:
                outputs = {name: t.to(self.device) for name, t in outputs.items()}
            augment = torch.from_numpy(np.array(self.arrays["augment"][cached]))
            self._slab = (cached, EpochSlab(augment.to(self.device), outputs, self.meta["num_classes"],
                                            self.device, self.meta.get("members", 0)))
        return self._slab[1]


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "..." if len(text) > 40 else text
