"""``kdlab eval``: evaluate a saved student on the validation and/or test split of its run's data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.assembly import load_saved_model
from kdlab.config.compare import SPLIT_KEYS, first_change
from kdlab.core import checkpoint
from kdlab.core.errors import ConfigError
from kdlab.engine.metrics import evaluate_model
from kdlab.engine.precision import resolve_precision


def evaluate_checkpoint(location: str | Path, overrides: Sequence[str] = (),
                        splits: Sequence[str] | None = None, model: str = "student") -> dict[str, Any]:
    """Metrics of the student (or another model of the run: ``model``) in a checkpoint or run directory
    on the requested splits."""
    saved = load_saved_model(location, overrides, model=model)
    if saved.data is None:
        raise ConfigError(f"{saved.path}: the run's data were given from Python ({saved.config.data.name}); "
                          "evaluate it there: kdlab.load_run(RUN_DIR).evaluate(dataset)")
    change = first_change(saved.state["config"], saved.config.model_dump(mode="json"), SPLIT_KEYS)
    if change is not None and "val" in (splits or []):
        raise ConfigError(f"{change[0]}: changing it changes which samples form the validation split, "
                          "so it would hold samples the model trained on; evaluate --split test instead")
    device = next(saved.model.parameters()).device
    precision = resolve_precision(saved.config.train.precision, device)
    results: dict[str, Any] = {"checkpoint": str(saved.path), "model": model, "step": saved.state.get("step")}
    for split in splits or ["test"]:
        source = saved.data.test if split == "test" else saved.data.val
        if source is None:
            raise checkpoint.CheckpointError(f"{saved.path}: the run has no {split} split "
                                             "(data.val_fraction=0)")
        results[split] = evaluate_model(saved.model, source, precision, top_k=saved.config.train.top_k)
    return results
