"""``kdlab eval``: evaluate a saved student on the validation and/or test split of its run's data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.config.load import apply_overrides, validate
from kdlab.engine import checkpoint
from kdlab.engine.metrics import evaluate_model
from kdlab.engine.precision import resolve_precision
from kdlab.run import build_data_for, build_network, checkpoint_path, load_student, resolve_device


def evaluate_checkpoint(location: str | Path, overrides: Sequence[str] = (),
                        splits: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics of the student in a checkpoint (or run directory) on the requested splits."""
    path = checkpoint_path(location, "checkpoint")
    state = checkpoint.load(path)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise checkpoint.CheckpointError(f"{path}: not a kdlab checkpoint (no config or model)")
    config = validate(apply_overrides(state["config"], overrides), source=str(path))
    device = resolve_device(config.train.device)
    data = build_data_for(config, device)
    config.student.checkpoint = None
    student = load_student(state, build_network(config.student, data, "student"), str(path)).to(device)
    precision = resolve_precision(config.train.precision, device)
    results: dict[str, Any] = {"checkpoint": str(path), "step": state.get("step")}
    for split in splits or ["test"]:
        source = data.test if split == "test" else data.val
        if source is None:
            raise checkpoint.CheckpointError(f"{path}: the run has no {split} split (data.val_fraction=0)")
        results[split] = evaluate_model(student, source, precision)
    return results
