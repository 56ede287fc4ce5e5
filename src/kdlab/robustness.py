"""Run-layer glue for label noise and class imbalance (``data.noise`` / ``data.imbalance``).

From the config to the data layer's corruption specs, the per-class breakdown the trainer adds to every
evaluation (``train.per_class``), the run directory's ``noisy_labels.pt``, and the ``corruption``
section of ``summary.json`` (class names and counts, realized noise rates, the train transition
counts, the many/medium/few groups).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdlab.config.schema import DataConfig, RunConfig
from kdlab.core import checkpoint
from kdlab.data import DataBundle
from kdlab.data.corruption import GROUP_NAMES, ImbalanceSpec, NoiseSpec
from kdlab.engine.metrics import ClassBreakdown

LABELS_FILE = "noisy_labels.pt"


def corruption_specs(data: DataConfig) -> dict[str, Any]:
    """``build_data`` keyword arguments for the config's noise and imbalance sections."""
    return {
        "noise": NoiseSpec(**data.noise.model_dump()) if data.noise is not None else None,
        "imbalance": ImbalanceSpec(**data.imbalance.model_dump()) if data.imbalance is not None else None,
    }


def class_breakdown(config: RunConfig, data: DataBundle) -> ClassBreakdown | None:
    """Per-class top-1 when ``train.per_class`` asks for it (auto: under noise or imbalance), with
    many/medium/few groups under imbalance."""
    mode = config.train.per_class
    corrupted = config.data.noise is not None or config.data.imbalance is not None
    if mode == "off" or (mode == "auto" and not corrupted):
        return None
    groups = data.corruption.groups if data.corruption is not None else None
    return ClassBreakdown(data.num_classes, groups, GROUP_NAMES)


def save_noisy_labels(data: DataBundle, run_dir: Path) -> None:
    """Write the labels the run trains on to ``RUN_DIR/noisy_labels.pt`` (reusable via data.noise.labels)."""
    if data.corruption is not None and data.corruption.record is not None:
        checkpoint.save_atomic(data.corruption.record, run_dir / LABELS_FILE)


def corruption_summary(data: DataBundle, breakdown: ClassBreakdown | None) -> dict[str, Any]:
    """The ``summary.json`` entries of a run with corruption or a per-class breakdown (else empty)."""
    if data.corruption is None and breakdown is None:
        return {}
    report = dict(data.corruption.report) if data.corruption is not None else {}
    return {"classes": list(data.classes), "corruption": report}
