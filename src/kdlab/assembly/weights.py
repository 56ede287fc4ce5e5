"""Weights into a network from what a config points at: a kdlab run directory, a checkpoint or a plain
state_dict file; a BatchEnsemble student merged into the plain network it deploys as."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdlab.config.schema import RunConfig
from kdlab.core import checkpoint
from kdlab.core.errors import ConfigError
from kdlab.engine.selection import RUN_CHECKPOINTS, result_file
from kdlab.methods import METHODS


def result_checkpoint(location: str | Path, key: str) -> Path:
    """A run directory means the checkpoint of its result (see :mod:`kdlab.engine.selection`); a file is
    itself. ``key`` names the config key or argument in the error."""
    path = Path(location)
    if path.is_dir():
        found = result_file(path)
        if found is None:
            raise ConfigError(f"{key}: {path} is a directory without {', '.join(RUN_CHECKPOINTS)}")
        return found
    if not path.is_file():
        raise ConfigError(f"{key}: {path} not found (expected a kdlab run directory or checkpoint file)")
    return path


def fit_weights(model: nn.Module, weights: dict[str, Any], where: str) -> None:
    """``model.load_state_dict(weights)``, a mismatch as one line starting with ``where``."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ConfigError(f"{where} does not fit {type(model).__name__}: {checkpoint.mismatch_reason(exc)}"
                          ) from None


def load_model_weights(model: nn.Module, location: str | Path, key: str) -> None:
    """Load a kdlab checkpoint's student (or a plain state_dict file) into ``model``."""
    path = result_checkpoint(location, key)
    state = checkpoint.load(path)
    weights = checkpoint.student_state(state["model"]) if isinstance(state.get("model"), dict) else state
    fit_weights(model, weights, f"{key}: {path}")


def load_student(state: dict[str, Any], network: nn.Module, config: RunConfig,
                 where: str = "checkpoint") -> nn.Module:
    """The checkpoint's student as one plain network of ``network``'s architecture, deployed as the
    run's method declares (``Distiller.student_module`` / ``deploy_student``: a BatchEnsemble merged)."""
    method = METHODS.get(config.method.name)
    weights = checkpoint.student_state(state["model"])
    student = method.student_module(network, config, weights)
    fit_weights(student, weights, where)
    return method.deploy_student(student)
