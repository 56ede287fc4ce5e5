"""The noisy-label file (``noisy_labels.pt``): one noisy label vector shared by every run of a condition.

It holds, over the dataset's whole training part (length ``N``, indexed by position in the raw training
set): ``labels`` (int64; noisy where corrupted, clean elsewhere), ``covered`` (bool; the positions the
producing run corrupted: its train part, plus its validation part unless that stayed clean),
``clean_sha256`` (a digest of the clean labels, to catch a different dataset), ``noise`` (the settings
that made it) and ``classes``. A run that names the file in ``data.noise.labels`` takes its labels from
it instead of drawing them, after checking that it fits.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdlab.data.corruption.errors import CorruptionError

FORMAT = 1


def labels_digest(targets: Tensor) -> str:
    return hashlib.sha256(targets.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def make_record(clean: Tensor, noisy_full: Tensor, covered: Tensor, noise: dict[str, Any],
                classes: list[str]) -> dict[str, Any]:
    return {"format": FORMAT, "labels": noisy_full, "covered": covered, "clean_sha256": labels_digest(clean),
            "noise": noise, "classes": list(classes)}


def load_record(path: str | Path, clean: Tensor, noise: dict[str, Any]) -> dict[str, Any]:
    """Read ``path`` and check it belongs to this dataset and was drawn with exactly these noise settings
    (type, rate, seed, flip map, ...): ``ValueError`` naming the first that differs if not."""
    path = Path(path)
    if not path.is_file():
        raise CorruptionError(f"data.noise.labels: {path} not found (expected a noisy_labels.pt from a "
                              "kdlab run or study)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user error
        raise CorruptionError(f"data.noise.labels: {path} is not a readable noisy-label file "
                              f"({type(exc).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CorruptionError(f"data.noise.labels: {path} is not a kdlab noisy-label file")
    labels, covered = record["labels"], record["covered"]
    if len(labels) != len(clean) or record["clean_sha256"] != labels_digest(clean):
        raise CorruptionError(f"data.noise.labels: {path} was made for another dataset ({len(labels)} "
                              f"labels; this training set has {len(clean)})")
    num_classes = len(record["classes"])
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise CorruptionError(f"data.noise.labels: {path} holds labels outside 0..{num_classes - 1}")
    saved = record["noise"]
    for key, wanted in noise.items():
        if saved.get(key) != wanted:
            raise CorruptionError(f"data.noise.labels: {path} was drawn with noise "
                                  f"{key}={saved.get(key)!r}, but the config asks for {wanted!r}; delete the "
                                  "file to draw it again, or match the settings")
    if not isinstance(covered, Tensor) or covered.dtype != torch.bool:
        raise CorruptionError(f"data.noise.labels: {path} has no coverage mask")
    return record
