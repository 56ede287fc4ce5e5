"""Apply imbalance, then label noise, to the training and validation parts of a dataset.

The validation part is carved from the clean, balanced training set first (so every condition
validates on the same images), then corrupted like the training part: it follows the same long-tail
profile (scaled to its own size) and, by default, carries label noise at the same rate (``val:
noisy``), so that model selection sees only what a practitioner would have. The test part is never
touched. Train and validation draws use separate seeded streams, each with an exact count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from kdlab.data.corruption.errors import CorruptionError
from kdlab.data.corruption.imbalance import GROUP_NAMES, class_groups, class_sizes, keep_per_class
from kdlab.data.corruption.labels import load_record, make_record
from kdlab.data.corruption.noise import make_noisy, resolve_flip_map, transition_counts
from kdlab.data.order import derive_seed

NOISE_STREAM = 101
IMBALANCE_STREAM = 201


@dataclass(frozen=True)
class NoiseSpec:
    """Label noise settings (the ``data.noise`` config section; see :mod:`kdlab.data.corruption.noise`)."""

    type: str = "symmetric"
    rate: float = 0.0
    seed: int = 0
    flip_map: dict[str | int, str | int] | None = None
    include_true_class: bool = False
    val: str = "noisy"
    labels: str | None = None


@dataclass(frozen=True)
class ImbalanceSpec:
    """Long-tail settings (the ``data.imbalance`` section; see :mod:`kdlab.data.corruption.imbalance`)."""

    profile: str = "exponential"
    ratio: float = 1.0
    seed: int = 0
    minority_fraction: float = 0.5
    groups: str = "thirds"


@dataclass
class CorruptedSplits:
    """Positions (into the raw training part) and labels of the corrupted train and validation parts.

    ``report`` describes what was done (class counts, realized noise rates, the train transition
    counts, the class groups); ``record`` is the noisy-label file's content (None without noise);
    ``groups`` is the group id per class (None without imbalance).
    """

    train_positions: Tensor
    val_positions: Tensor | None
    train_targets: Tensor
    val_targets: Tensor | None
    report: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None
    groups: Tensor | None = None


def _generator(seed: int, stream: int, part: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream, part))


def _imbalance(clean: Tensor, positions: Tensor, spec: ImbalanceSpec, num_classes: int, part: int) -> Tensor:
    targets = clean[positions]
    sizes = class_sizes(torch.bincount(targets, minlength=num_classes), spec.profile, spec.ratio,
                        spec.minority_fraction)
    return positions[keep_per_class(targets, sizes, _generator(spec.seed, IMBALANCE_STREAM, part))]


def _noise_settings(spec: NoiseSpec, classes: list[str]) -> tuple[dict[str, Any], dict[int, int] | None]:
    flip_map = resolve_flip_map(spec.flip_map, classes) if spec.type == "asymmetric" else None
    settings = {"type": spec.type, "rate": spec.rate, "seed": spec.seed,
                "include_true_class": spec.include_true_class, "val": spec.val,
                "flip_map": sorted(flip_map.items()) if flip_map else None}
    return settings, flip_map


def _rate(clean: Tensor, noisy: Tensor | None) -> float | None:
    if noisy is None or len(clean) == 0:
        return None
    return round(float((clean != noisy).double().mean()), 6)


def corrupt_splits(clean: Tensor, train_positions: Tensor, val_positions: Tensor | None, classes: list[str],
                   noise: NoiseSpec | None, imbalance: ImbalanceSpec | None) -> CorruptedSplits:
    """Corrupt the parts at ``train_positions`` / ``val_positions`` of the clean labels ``clean``.

    Raises :class:`CorruptionError` naming the config key for bad settings or an unfit labels file.
    """
    imbalanced = _apply_imbalance(clean, train_positions, val_positions, len(classes), imbalance)
    return _apply_noise(clean, *imbalanced, classes, noise)


def _apply_imbalance(clean: Tensor, train_positions: Tensor, val_positions: Tensor | None, num_classes: int,
                     imbalance: ImbalanceSpec | None
                     ) -> tuple[Tensor, Tensor | None, dict[str, Any], Tensor | None]:
    report: dict[str, Any] = {}
    groups = None
    if imbalance is not None:
        train_positions = _imbalance(clean, train_positions, imbalance, num_classes, 0)
        if val_positions is not None:
            val_positions = _imbalance(clean, val_positions, imbalance, num_classes, 1)
        counts = torch.bincount(clean[train_positions], minlength=num_classes)
        groups = class_groups(counts, imbalance.groups)
        report["imbalance"] = {**asdict(imbalance),
                               "realized_ratio": round(float(counts.max() / counts.min().clamp(min=1)), 4)}
        report["groups"] = {"rule": imbalance.groups,
                            **{name: (groups == g).nonzero().squeeze(1).tolist()
                               for g, name in enumerate(GROUP_NAMES)}}
    return train_positions, val_positions, report, groups


def _apply_noise(clean: Tensor, train_positions: Tensor, val_positions: Tensor | None, report: dict[str, Any],
                 groups: Tensor | None, classes: list[str], noise: NoiseSpec | None) -> CorruptedSplits:
    num_classes = len(classes)
    train_targets = clean[train_positions]
    val_targets = clean[val_positions] if val_positions is not None else None
    record = None
    if noise is not None:
        settings, flip_map = _noise_settings(noise, classes)
        noisy_val = val_positions if val_positions is not None and noise.val == "noisy" else None
        if noise.labels is not None:
            record = _labels_from_file(noise.labels, clean, settings, train_positions, noisy_val)
        else:
            record = _draw_labels(clean, train_positions, noisy_val, noise, flip_map, settings, classes)
        train_targets = record["labels"][train_positions].clone()
        if noisy_val is not None:
            val_targets = record["labels"][noisy_val].clone()
        report["noise"] = {
            **settings, "labels": noise.labels,
            "realized_rate_train": _rate(clean[train_positions], train_targets),
            "realized_rate_val": None if val_positions is None else _rate(clean[val_positions], val_targets),
            "transition_train": transition_counts(clean[train_positions], train_targets,
                                                  num_classes).tolist(),
        }
    report["train_counts"] = torch.bincount(clean[train_positions], minlength=num_classes).tolist()
    if val_positions is not None:
        report["val_counts"] = torch.bincount(clean[val_positions], minlength=num_classes).tolist()
    return CorruptedSplits(train_positions, val_positions, train_targets, val_targets, report, record, groups)


def _labels_from_file(path: str, clean: Tensor, settings: dict[str, Any], train_positions: Tensor,
                      val_positions: Tensor | None) -> dict[str, Any]:
    record = load_record(path, clean, settings)
    needed = train_positions if val_positions is None else torch.cat([train_positions, val_positions])
    if not bool(record["covered"][needed].all()):
        raise CorruptionError(f"data.noise.labels: {path} does not cover this run's training samples "
                              "(made with another val_fraction, split_seed, subset, imbalance or noise.val)")
    return record


def _draw_labels(clean: Tensor, train_positions: Tensor, val_positions: Tensor | None, noise: NoiseSpec,
                 flip_map: dict[int, int] | None, settings: dict[str, Any],
                 classes: list[str]) -> dict[str, Any]:
    """Noisy labels for the train part (stream 0) and the validation part (stream 1), as a file record."""
    full = clean.clone()
    covered = torch.zeros(len(clean), dtype=torch.bool)
    parts = [train_positions] if val_positions is None else [train_positions, val_positions]
    for part, positions in enumerate(parts):
        full[positions] = make_noisy(clean[positions], len(classes), noise.type, noise.rate,
                                     _generator(noise.seed, NOISE_STREAM, part), flip_map,
                                     noise.include_true_class)
        covered[positions] = True
    return make_record(clean, full, covered, settings, classes)
