"""A trained model read back from a checkpoint or run directory, with the config and data it was
trained with (what ``kdlab eval`` and ``kdlab export`` work on)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from kdlab.assembly.distiller import build_run_distiller
from kdlab.assembly.networks import build_network
from kdlab.assembly.run_data import build_run_data
from kdlab.assembly.runtime import process_runtime, resolve_device
from kdlab.assembly.weights import fit_weights, load_student, result_checkpoint
from kdlab.config.load import apply_overrides, validate
from kdlab.config.schema import RunConfig
from kdlab.core import checkpoint
from kdlab.core.errors import ConfigError
from kdlab.data import DataBundle


@dataclass
class SavedModel:
    """A model read back from a checkpoint, with the run config and data it was trained with."""

    path: Path
    state: dict[str, Any]
    config: RunConfig
    data: DataBundle
    model: nn.Module
    architecture: str


def load_saved_model(location: str | Path, overrides: Sequence[str] = (), *, device: str | None = None,
                     model: str = "student") -> SavedModel:
    """The model ``model`` of a checkpoint or run directory, in eval mode, on ``device`` (default: the
    run's ``train.device``): ``student`` (deployed as its method declares: a BatchEnsemble merged), or a
    model the method evaluates beside it (``peer1``, ... of ``dml``), read from the whole distiller the
    checkpoint holds."""
    path = result_checkpoint(location, "checkpoint")
    state = checkpoint.load(path)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise checkpoint.CheckpointError(f"{path}: not a kdlab checkpoint (no config or model)")
    config = validate(apply_overrides(copy.deepcopy(state["config"]), overrides), source=str(path))
    if device is not None:
        config.train.device = device
    target = resolve_device(config.train.device)
    data = build_run_data(config, process_runtime(target, config.train.seed))
    config.student.checkpoint = None
    if model == "student":
        network = load_student(state, build_network(config.student, data, "student"), config, str(path))
        return SavedModel(path, state, config, data, network.to(target).eval(), config.student.name)
    distiller = build_run_distiller(config, data)
    others = distiller.eval_models()
    if model not in others:
        raise ConfigError(f"--model: {path} holds no model {model!r}; models: "
                          f"{', '.join(['student', *others])}")
    fit_weights(distiller, state["model"], str(path))
    network = others[model]
    return SavedModel(path, state, config, data, network.to(target).eval(), type(network).__name__)
