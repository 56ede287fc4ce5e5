"""The five-line Python API.

    import kdlab
    result = kdlab.distill(teacher="runs/teacher", student="resnet8x4", data="cifar100",
                           root="data/", epochs=240)
    print(result.summary["test_selected"])

``teacher`` and ``student`` are registry names (``"resnet32x4"``, ``"torchvision:resnet18"``) or
``nn.Module`` instances; a teacher given by name needs ``teacher_checkpoint`` (a kdlab run directory or
checkpoint) or ``pretrained=True`` weights. ``data`` is a registered dataset name (read from ``root``),
the folder of an ImageFolder tree (``train/`` and ``test/`` of class folders), or the user's own
``Dataset`` or ``DataLoader`` with ``test`` (and optionally ``val``) beside it (:mod:`kdlab.data.user`).
Any config key can be set with ``overrides`` in dotted form.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from kdlab.config.load import set_dotted, validate
from kdlab.core.errors import ConfigError
from kdlab.data import DATASETS, DataInput, UserData
from kdlab.engine.callbacks import Callback
from kdlab.run import RunResult, train


def _model_section(model: str | nn.Module, checkpoint: str | Path | None = None) -> dict[str, Any]:
    section: dict[str, Any] = {"name": model if isinstance(model, str) else "module"}
    if checkpoint is not None:
        section["checkpoint"] = str(checkpoint)
    return section


def _data_section(data: DataInput | UserData, val: DataInput | None, test: DataInput | None,
                  classes: Sequence[str] | int | None, root: str | Path | None
                  ) -> tuple[dict[str, Any], UserData | None]:
    """The config's ``data`` section, and the user's splits when ``data`` is not a registered name."""
    if isinstance(data, str) and data in DATASETS and val is None and test is None:
        return {"name": data, "root": None if root is None else str(root)}, None
    if isinstance(data, str | os.PathLike) and val is None and test is None:
        if not Path(data).is_dir():
            names = ", ".join(DATASETS.names())
            raise ConfigError(f"data: {data!r} is neither a registered dataset ({names}) nor a folder")
        return {"name": "imagefolder", "root": os.fspath(data)}, None
    if not isinstance(data, UserData):
        if test is None:
            raise ConfigError("test: give the held-out split to report on (a Dataset, DataLoader or folder) "
                              "beside your training data")
        data = UserData(data, test, val, classes)
    return {"name": data.name()}, data


def distill(
    teacher: str | nn.Module | None,
    student: str | nn.Module,
    data: DataInput | UserData,
    *,
    val: DataInput | None = None,
    test: DataInput | None = None,
    classes: Sequence[str] | int | None = None,
    root: str | Path | None = None,
    method: str = "kd",
    epochs: int | None = None,
    steps: int | None = None,
    teacher_checkpoint: str | Path | None = None,
    out_dir: str | Path = "runs",
    name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Distill ``teacher`` into ``student`` on ``data`` and return the run's result.

    ``teacher=None`` with ``method="ce"`` trains a model without distillation (a teacher, say).
    ``val``/``test``/``classes`` go with a user's own ``data`` (see :class:`kdlab.data.UserData`).
    """
    data_section, user_data = _data_section(data, val, test, classes, root)
    tree: dict[str, Any] = {
        "data": data_section,
        "student": _model_section(student),
        "method": {"name": method},
        "train": {"epochs": epochs, "steps": steps},
        "out_dir": str(out_dir),
        "name": name,
    }
    if teacher is not None:
        tree["teacher"] = _model_section(teacher, teacher_checkpoint)
    for key, value in (overrides or {}).items():
        set_dotted(tree, key.split("."), value)
    config = validate(tree, "kdlab.distill")
    return train(
        config,
        student=student if isinstance(student, nn.Module) else None,
        teacher=teacher if isinstance(teacher, nn.Module) else None,
        callbacks=callbacks,
        user_data=user_data,
    )
