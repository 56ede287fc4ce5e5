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
from kdlab.data import DataBundle, DataFacts, UserData
from kdlab.data.build import PYTHON_DATA


@dataclass
class SavedModel:
    """A model read back from a checkpoint, with the run config and data it was trained with (``data`` is
    None when the run's data were given from Python and no data were passed again; ``facts`` still say
    its classes, input shape and normalization)."""

    path: Path
    state: dict[str, Any]
    config: RunConfig
    data: DataBundle | None
    facts: DataFacts
    model: nn.Module
    architecture: str


def load_saved_model(location: str | Path, overrides: Sequence[str] = (), *, device: str | None = None,
                     model: str = "student", student: nn.Module | None = None,
                     data: UserData | None = None) -> SavedModel:
    """The model ``model`` of a checkpoint or run directory, in eval mode, on ``device`` (default: the
    run's ``train.device``): ``student`` (deployed as its method declares: a BatchEnsemble merged), or a
    model the method evaluates beside it (``peer1``, ... of ``dml``), read from the whole distiller the
    checkpoint holds. ``student``: the module to load the student's weights into, for a run whose
    student kdlab cannot build (``module:CLASS``). ``data``: the run's data, for a run whose data were
    given from Python (else they are read as its config says; without either, ``SavedModel.data`` is
    None)."""
    path = result_checkpoint(location, "checkpoint")
    state = checkpoint.load(path)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise checkpoint.CheckpointError(f"{path}: not a kdlab checkpoint (no config or model)")
    config = validate(apply_overrides(copy.deepcopy(state["config"]), overrides), source=str(path))
    if device is not None:
        config.train.device = device
    target = resolve_device(config.train.device)
    runtime = process_runtime(target, config.train.seed)
    bundle = None
    if data is not None or not config.data.name.startswith(PYTHON_DATA):
        bundle = build_run_data(config, runtime, data)
    facts = bundle.facts() if bundle is not None else DataFacts.read(path.parent)
    config.student.checkpoint = None
    if model == "student":
        network = student if student is not None else build_network(config.student, facts, "student")
        network = load_student(state, network, config, str(path))
        architecture = config.student.name if student is None else type(student).__name__
        return SavedModel(path, state, config, bundle, facts, network.to(target).eval(), architecture)
    if bundle is None:
        raise ConfigError(f"--model: reading {model!r} rebuilds the run's distiller, which needs its data: "
                          "pass them (kdlab.load_run(RUN_DIR, data=...))")
    distiller = build_run_distiller(config, bundle, student=student)
    others = distiller.eval_models()
    if model not in others:
        raise ConfigError(f"--model: {path} holds no model {model!r}; models: "
                          f"{', '.join(['student', *others])}")
    fit_weights(distiller, state["model"], str(path))
    network = others[model]
    return SavedModel(path, state, config, bundle, facts, network.to(target).eval(), type(network).__name__)
