"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) of training batches, with
``torchvision.transforms.v2.MixUp`` / ``CutMix``:

    x = lam * x_i + (1 - lam) * x_j  (MixUp; CutMix pastes a box of x_j, lam = 1 - box area share)
    q = lam * onehot(y_i) + (1 - lam) * onehot(y_j),   lam ~ Beta(alpha, alpha)

:class:`MixedBatchSource` wraps a training batch source and mixes each batch where it already is, on
the training device, after normalization (mixing commutes with the per-channel affine normalization,
so this is the normalized mix of the images). ``Batch.inputs`` become the mixed images,
``Batch.soft_targets`` the mixed label distributions ``q``, and ``Batch.targets`` stay each sample's
own class id. v2 pairs each image with the one before it in the (shuffled) batch and draws one lambda,
one CutMix box and, with both set, the choice between them per batch, from the CPU generator: each
batch draws under a seed of (seed, epoch, batch index), so the draws do not depend on the global RNG,
leave it as it was, and repeat exactly on resume. Under DDP every rank mixes its own shard, with the
lambda and box of the step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torchvision.transforms import v2

from kdlab.config.schema import MixConfig
from kdlab.data.batch import Batch, BatchSource
from kdlab.data.order import derive_seed
from kdlab.data.transforms import Transform

#: the stream id of the batch-mixing draws (apart from the epoch's order and augmentation)
MIX_STREAM = 0x6D6978
#: with both MixUp and CutMix, the share of mixed batches that use CutMix unless ``switch_prob`` says
SWITCH_PROB = 0.5


def mix_transform(config: MixConfig, num_classes: int) -> Transform:
    """``MixUp`` and/or ``CutMix`` of ``data.mix``: with both, one of them per batch (CutMix with
    ``switch_prob``, 0.5 by default, as torchvision's reference recipe); applied to a share ``prob`` of
    the batches."""
    choices = [*([v2.MixUp(alpha=config.mixup_alpha, num_classes=num_classes)]
                 if config.mixup_alpha is not None else []),
               *([v2.CutMix(alpha=config.cutmix_alpha, num_classes=num_classes)]
                 if config.cutmix_alpha is not None else [])]
    switch = SWITCH_PROB if config.switch_prob is None else config.switch_prob
    mix = choices[0] if len(choices) == 1 else v2.RandomChoice(choices, p=[1 - switch, switch])
    return mix if config.prob == 1 else v2.RandomApply([mix], p=config.prob)


class MixedBatchSource:
    """A training :class:`~kdlab.data.batch.BatchSource` whose batches are mixed by ``mix`` (a transform
    of ``(images, class ids)`` returning ``(images, labels)``, the labels ``[B, C]`` when it mixed)."""

    def __init__(self, source: BatchSource, mix: Transform, seed: int) -> None:
        self.source = source
        self.mix = mix
        self.seed = seed
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return self.source.num_samples

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.source.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        for index, batch in enumerate(self.source):
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(derive_seed(self.seed, self.epoch, MIX_STREAM, index))
                inputs, labels = self.mix(batch.inputs, batch.targets)
            yield batch._replace(inputs=inputs, soft_targets=labels if labels.ndim == 2 else None)
