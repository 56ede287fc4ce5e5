"""Label noise at rate ``r``: symmetric, asymmetric (a class-to-class map) and pair-flip.

Every generator is a deterministic function of the clean labels and a ``torch.Generator``, and flips an
exact number of labels (rounded once), so the realized rate is known before training:

- **symmetric**: exactly ``round(r * N)`` samples, chosen uniformly without replacement, get a label
  drawn uniformly from the C-1 *other* classes (``(y + U{1..C-1}) mod C``), so the realized flip rate
  is ``r`` (spec section 5.3, step 2). With ``include_true_class`` the new label is drawn from all C
  classes instead (the NeurAI-Lab NCT convention), so only about ``r (C-1)/C`` of the labels change.
- **asymmetric**: for each source class ``s`` of a map ``s -> t``, exactly ``round(r * n_s)`` of its
  samples are relabelled ``t`` (Patrini et al., CVPR 2017; default maps in :mod:`.flipmaps`). The
  overall rate is ``r`` times the share of samples in source classes. Membership is decided on the
  clean labels, so ``cat <-> dog`` swaps without double flips.
- **pairflip**: the map ``c -> (c + 1) mod C`` for every class (Han et al., NeurIPS 2018, Co-teaching).

The papers flip each sample with probability ``r``; we flip an exact per-class (asymmetric, pair-flip)
or global (symmetric) count, which has the same expectation and no sampling error in the rate.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from kdlab.data.corruption.errors import CorruptionError
from kdlab.data.corruption.flipmaps import default_flip_map

NOISE_TYPES = ("symmetric", "asymmetric", "pairflip")


def symmetric_noise(targets: Tensor, num_classes: int, rate: float, generator: torch.Generator,
                    include_true_class: bool = False) -> Tensor:
    """Labels with exactly ``round(rate * N)`` samples relabelled uniformly (see the module docstring)."""
    _check_rate(rate)
    n = len(targets)
    count = round(rate * n)
    chosen = torch.randperm(n, generator=generator)[:count]
    noisy = targets.clone()
    if include_true_class:
        noisy[chosen] = torch.randint(num_classes, (count,), generator=generator)
    elif num_classes > 1:
        offset = torch.randint(1, num_classes, (count,), generator=generator)
        noisy[chosen] = (targets[chosen] + offset) % num_classes
    return noisy


def mapped_noise(targets: Tensor, mapping: Mapping[int, int], rate: float,
                 generator: torch.Generator) -> Tensor:
    """Labels where exactly ``round(rate * n_s)`` samples of each source class ``s`` become ``mapping[s]``."""
    _check_rate(rate)
    noisy = targets.clone()
    for source in sorted(mapping):
        members = (targets == source).nonzero().squeeze(1)
        count = round(rate * len(members))
        chosen = members[torch.randperm(len(members), generator=generator)[:count]]
        noisy[chosen] = mapping[source]
    return noisy


def pairflip_map(num_classes: int) -> dict[int, int]:
    """``c -> (c + 1) mod C``."""
    return {c: (c + 1) % num_classes for c in range(num_classes)}


def resolve_flip_map(raw: Mapping[str | int, str | int] | None, classes: list[str]) -> dict[int, int]:
    """A user map (class names or label ids, either side) as label ids; None means the dataset default."""
    if raw is None:
        mapping = default_flip_map(classes)
        if mapping is None:
            shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
            raise CorruptionError(f"data.noise.flip_map: no default asymmetric map for classes [{shown}]; "
                                  "give one as SOURCE: TARGET class names or ids, e.g. {cat: dog}")
        return mapping
    index = {name: i for i, name in enumerate(classes)}

    def label(value: str | int) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
            return value
        if isinstance(value, str) and value in index:
            return index[value]
        if isinstance(value, str) and value.isdigit() and int(value) < len(classes):
            return int(value)
        raise CorruptionError(f"data.noise.flip_map: {value!r} is neither a class name nor a label id "
                              f"in 0..{len(classes) - 1}")

    return {label(source): label(target) for source, target in raw.items()}


def make_noisy(targets: Tensor, num_classes: int, kind: str, rate: float, generator: torch.Generator,
               flip_map: Mapping[int, int] | None = None, include_true_class: bool = False) -> Tensor:
    """Noisy labels of type ``kind`` (``symmetric``, ``asymmetric`` with ``flip_map``, ``pairflip``)."""
    if kind == "symmetric":
        return symmetric_noise(targets, num_classes, rate, generator, include_true_class)
    if kind == "pairflip":
        return mapped_noise(targets, pairflip_map(num_classes), rate, generator)
    if kind == "asymmetric":
        if flip_map is None:
            raise CorruptionError("data.noise.flip_map: asymmetric noise needs a class-to-class map")
        return mapped_noise(targets, flip_map, rate, generator)
    raise CorruptionError(f"data.noise.type: must be one of {', '.join(NOISE_TYPES)}; got {kind!r}")


def transition_counts(clean: Tensor, noisy: Tensor, num_classes: int) -> Tensor:
    """C x C counts: entry (i, j) is the number of samples of clean class i labelled j."""
    flat = clean.long() * num_classes + noisy.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise CorruptionError(f"data.noise.rate: must be in [0, 1], got {rate}")
