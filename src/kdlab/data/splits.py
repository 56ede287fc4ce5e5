"""Deterministic stratified selections: the validation split carved from train, and a training subset."""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.data.order import derive_seed

SUBSET_STREAM = 1


def stratified_pick(targets: Tensor, count: int, seed: int) -> Tensor:
    """Sorted positions of ``count`` samples drawn per class in proportion to the class sizes.

    Per-class quotas are rounded by largest remainder (ties to the lower class id) so that they add up
    to ``count`` exactly; which samples are taken within a class is a seeded random draw.
    """
    n = len(targets)
    if not 0 <= count <= n:
        raise ValueError(f"cannot pick {count} of {n} samples")
    classes, inverse, counts = torch.unique(targets, return_inverse=True, return_counts=True)
    quota = counts.double() * count / n
    take = quota.floor().long()
    remainder = quota - take
    extra = torch.argsort(-remainder, stable=True)[: count - int(take.sum())]
    take[extra] += 1
    generator = torch.Generator().manual_seed(derive_seed(seed))
    shuffled = torch.randperm(n, generator=generator)
    grouped = shuffled[torch.argsort(inverse[shuffled], stable=True)]
    starts = torch.cumsum(counts, 0) - counts
    group = inverse[grouped]
    rank_in_class = torch.arange(n) - starts[group]
    return grouped[rank_in_class < take[group]].sort().values


def complement(n: int, picked: Tensor) -> Tensor:
    """Sorted positions in ``0..n-1`` that are not in ``picked``."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[picked] = False
    return keep.nonzero().squeeze(1)


def split_train_val(targets: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor | None]:
    """(train positions, validation positions or None), stratified per class and disjoint.

    The validation part has ``round(val_fraction * n)`` samples (at least one when the fraction is
    positive) and depends only on ``targets``, ``val_fraction`` and ``seed``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(targets)
    if val_fraction == 0:
        return torch.arange(n), None
    val = stratified_pick(targets, max(1, round(val_fraction * n)), seed)
    return complement(n, val), val


def take_subset(targets: Tensor, subset: int | None, seed: int) -> Tensor:
    """Sorted positions of at most ``subset`` samples, stratified; all positions when None or larger."""
    n = len(targets)
    if subset is None or subset >= n:
        return torch.arange(n)
    if subset < 1:
        raise ValueError(f"subset must be positive, got {subset}")
    return stratified_pick(targets, subset, derive_seed(seed, SUBSET_STREAM))
