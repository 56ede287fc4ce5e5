"""Long-tailed class imbalance with ratio ``rho = n_max / n_min``, and many/medium/few class groups.

Per-class sizes, classes in label order from head to tail (spec section 5.3):

- **exponential** (Cui et al., CVPR 2019, "Class-balanced loss"): ``n_c = floor(n_max * rho^(-c/(C-1)))``;
- **step** (Buda et al., 2018): the first ``C - floor(mu * C)`` classes keep ``n_max`` and the last
  ``floor(mu * C)`` (the minority, ``mu = minority_fraction``, 0.5 by default: ``ceil(C/2)`` majority
  classes) get ``floor(n_max / rho)``.

``n_max`` is the smallest class count of the part being subsampled (the largest size every class can
supply), so on a balanced set it is the class size and on a mildly unbalanced one (MNIST) the head
size is met exactly. Every class keeps at least one sample. Which samples are kept: the first ``n_c``
of each class after a seeded shuffle, so with one seed a larger ``rho`` keeps a subset of a smaller one.

Groups for reporting, from the *training* class counts:

- ``thirds``: classes ranked by count (ties by label id); the top ``round(C/3)`` are *many*, the bottom
  ``round(C/3)`` *few*, the rest *medium* (works for 10-class sets, where absolute thresholds leave
  groups empty);
- ``absolute`` (Liu et al., CVPR 2019, OLTR): *many* > 100 samples, *few* < 20, *medium* in between.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kdlab.data.corruption.errors import CorruptionError

IMBALANCE_PROFILES = ("exponential", "step")
GROUP_RULES = ("thirds", "absolute")
GROUP_NAMES = ("many", "medium", "few")


def class_sizes(counts: Tensor, profile: str, ratio: float, minority_fraction: float = 0.5) -> Tensor:
    """Per-class target sizes (int64) for a part whose class counts are ``counts``."""
    if ratio < 1:
        raise CorruptionError(f"data.imbalance: imbalance ratio must be >= 1, got {ratio}")
    num_classes = len(counts)
    n_max = int(counts.min())
    if profile == "exponential":
        exponents = torch.arange(num_classes, dtype=torch.float64) / max(num_classes - 1, 1)
        sizes = torch.floor(n_max * ratio ** (-exponents) + 1e-9).long()
    elif profile == "step":
        if not 0 <= minority_fraction <= 1:
            raise CorruptionError(f"data.imbalance: minority_fraction must be in [0, 1], got "
                                  f"{minority_fraction}")
        minority = math.floor(minority_fraction * num_classes)
        sizes = torch.full((num_classes,), n_max, dtype=torch.long)
        sizes[num_classes - minority:] = math.floor(n_max / ratio + 1e-9)
    else:
        raise CorruptionError(f"data.imbalance: imbalance profile must be one of "
                              f"{', '.join(IMBALANCE_PROFILES)}; got {profile!r}")
    return sizes.clamp(min=min(1, n_max))


def keep_per_class(targets: Tensor, sizes: Tensor, generator: torch.Generator) -> Tensor:
    """Sorted positions: the first ``sizes[c]`` samples of each class ``c`` after a seeded shuffle."""
    order = torch.randperm(len(targets), generator=generator)
    shuffled = targets[order]
    grouped = order[torch.argsort(shuffled, stable=True)]
    counts = torch.bincount(targets, minlength=len(sizes))
    starts = torch.cumsum(counts, 0) - counts
    group = targets[grouped]
    rank_in_class = torch.arange(len(targets)) - starts[group]
    return grouped[rank_in_class < sizes[group]].sort().values


def class_groups(train_counts: Tensor, rule: str = "thirds") -> Tensor:
    """Group id per class (0 many, 1 medium, 2 few; see :data:`GROUP_NAMES`) from training counts."""
    num_classes = len(train_counts)
    if rule == "absolute":
        groups = torch.ones(num_classes, dtype=torch.long)
        groups[train_counts > 100] = 0
        groups[train_counts < 20] = 2
        return groups
    if rule != "thirds":
        raise CorruptionError(f"data.imbalance: group rule must be one of {', '.join(GROUP_RULES)}; got "
                              f"{rule!r}")
    ranked = torch.argsort(-train_counts, stable=True)
    third = round(num_classes / 3)
    groups = torch.ones(num_classes, dtype=torch.long)
    groups[ranked[:third]] = 0
    groups[ranked[num_classes - third:]] = 2
    return groups
