"""The five-line Python API.

    import kdlab
    result = kdlab.distill(teacher="runs/teacher", student="resnet8x4", data="cifar100",
                           root="data/", epochs=240)
    print(result.summary["test_selected"])

``teacher`` and ``student`` are registry names (``"resnet32x4"``, ``"torchvision:resnet18"``) or
``nn.Module`` instances; a teacher given by name needs ``teacher_checkpoint`` (a kdlab run directory or
checkpoint) or ``pretrained=True`` weights. Any config key can be set with ``overrides`` in dotted form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from kdlab.config.load import set_dotted, validate
from kdlab.engine.callbacks import Callback
from kdlab.run import RunResult, train


def _model_section(model: str | nn.Module, checkpoint: str | Path | None = None) -> dict[str, Any]:
    name = model if isinstance(model, str) else f"module:{type(model).__name__}"
    section: dict[str, Any] = {"name": name}
    if checkpoint is not None:
        section["checkpoint"] = str(checkpoint)
    return section


def distill(
    teacher: str | nn.Module | None,
    student: str | nn.Module,
    data: str,
    *,
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
    """Distill ``teacher`` into ``student`` on dataset ``data`` and return the run's result.

    ``teacher=None`` with ``method="ce"`` trains a model without distillation (a teacher, say).
    """
    tree: dict[str, Any] = {
        "data": {"name": data, "root": None if root is None else str(root)},
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
    )
