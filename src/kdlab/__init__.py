"""kdlab: knowledge distillation for image classifiers.

Public API: :func:`distill` (five-line distillation), :func:`train` (a run from a :class:`RunConfig`),
:func:`load_config`, :class:`Trainer`, :class:`Distiller` (whose ``distill(batch, step)`` receives a
:class:`StepContext`) with :func:`register_method`, :func:`build_model`, :func:`build_data` (a data
section and a :class:`Runtime`), :class:`Callback`. Names are imported on first use, so
``import kdlab`` stays cheap and subpackages import independently.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "distill": "kdlab.api",
    "RunConfig": "kdlab.config",
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
