"""Each domain split into an "in" part (training / the reported test accuracy) and an "out" part
(held-out validation), DomainBed's ``holdout_fraction`` (0.2 by default): stratified per class,
seeded by ``(split_seed, domain index)``, disjoint, and the same for a given seed whatever the
test domain is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kdlab.data.order import derive_seed
from kdlab.data.raw import Split
from kdlab.data.splits import split_train_val

SPLIT_STREAM = 21


@dataclass(frozen=True)
class DomainSplit:
    """Positions of one domain's in and out parts (``out`` is empty when the fraction is 0)."""

    inside: Tensor
    out: Tensor


def split_domain(targets: Tensor, holdout_fraction: float, split_seed: int, domain: int) -> DomainSplit:
    inside, out = split_train_val(targets, holdout_fraction, derive_seed(split_seed, SPLIT_STREAM, domain))
    return DomainSplit(inside, out if out is not None else torch.zeros(0, dtype=torch.int64))


def concat(parts: list[Split]) -> Split:
    """The parts one after another (all decoded or all file-based)."""
    targets = torch.cat([p.targets for p in parts])
    if all(p.decoded for p in parts):
        return Split(targets, images=torch.cat([p.images for p in parts]))
    return Split(targets, files=tuple(f for p in parts for f in p.files))
