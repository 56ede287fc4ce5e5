"""kdlab: knowledge distillation for image classifiers.

Public API: :func:`distill` (five-line distillation, on a registered dataset or the user's own
``Dataset``/``DataLoader``: :class:`UserData`), :func:`train` (a run from a :class:`RunConfig`),
:func:`load_run` (a finished run, to evaluate and export), :func:`load_config`, :class:`Trainer` (fed by
any :class:`BatchSource` of :class:`Batch` es, with a :class:`TrainConfig`), :class:`Distiller` (built
with a :class:`DistillContext`; its ``distill(batch, step)`` receives a :class:`StepContext`) with
:func:`register_method`, :func:`build_model`, :func:`build_data` (a data section and a
:class:`Runtime`), :class:`Callback`. See docs/api.md. Names are imported on first use, so
``import kdlab`` stays cheap and subpackages import independently.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "distill": "kdlab.api",
    "RunConfig": "kdlab.config",
    "TrainConfig": "kdlab.config",
    "Batch": "kdlab.data",
    "BatchSource": "kdlab.data",
    "DataBundle": "kdlab.data",
    "UserData": "kdlab.data",
    "DistillContext": "kdlab.methods",
    "LoadedRun": "kdlab.saved_run",
    "load_run": "kdlab.saved_run",
    "load_config": "kdlab.config",
    "build_data": "kdlab.data",
    "Callback": "kdlab.engine",
    "Trainer": "kdlab.engine",
    "Distiller": "kdlab.methods",
    "DistillOutput": "kdlab.methods",
    "register_method": "kdlab.methods",
    "StepContext": "kdlab.methods",
    "Runtime": "kdlab.core.runtime",
    "FeatureTaps": "kdlab.models",
    "build_model": "kdlab.models",
    "stage_preset": "kdlab.models",
    "RunResult": "kdlab.run",
    "train": "kdlab.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kdlab' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
