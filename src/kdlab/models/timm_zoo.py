"""timm models by name (``timm:NAME``) when timm is installed (``pip install kdlab[timm]``)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from torch import nn

from kdlab.core.registry import UnknownNameError, closest
from kdlab.models.detect import detect_stage_preset, last_linear
from kdlab.models.errors import ModelError
from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset
from kdlab.models.surgery import load_weights

PREFIX = "timm:"


def _timm() -> ModuleType:
    try:
        return importlib.import_module("timm")
    except ImportError as err:
        raise ModelError("timm models need timm: pip install kdlab[timm]") from err


def classifier_path(model: nn.Module) -> str:
    """The head named by the model's pretrained config, else its last ``nn.Linear``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier")
    names = dict(model.named_modules())
    return head if isinstance(head, str) and isinstance(names.get(head), nn.Linear) else last_linear(model)


def build_timm(
    name: str,
    num_classes: int,
    pretrained: bool | str | os.PathLike[str],
    in_channels: int | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    """``timm.create_model(name, ...)``; timm itself resizes the head of pretrained weights."""
    timm = _timm()
    if not timm.is_model(name):
        known = timm.list_models()
        raise UnknownNameError(f"unknown timm model {name!r}{closest(name, known)}")
    if in_channels is not None:
        kwargs = {**kwargs, "in_chans": in_channels}
    try:
        model = timm.create_model(name, pretrained=pretrained is True, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ModelError(f"timm model {name!r}: {err}") from err
    if pretrained and pretrained is not True:
        load_weights(model, pretrained, classifier_path(model), num_classes)
    return model


def timm_preset(name: str, model: nn.Module | None = None) -> StagePreset:
    """Stages from the model's ``feature_info`` (last module at each reduction), else detected on
    ``model`` (built with random weights when not given)."""
    if model is None:
        model = build_timm(name, 1000, False, None, {})
    info = getattr(model, "feature_info", None)
    ends: dict[int, str] = {}
    for entry in info if isinstance(info, list) else []:
        if isinstance(entry, dict) and "module" in entry and "reduction" in entry:
            ends[entry["reduction"]] = entry["module"]
    if len(ends) < 2:
        return detect_stage_preset(model)
    taps = [TapPoint(ends[r]) for r in sorted(ends)]
    return StagePreset(
        stages=tuple(taps[-4:]),
        stem=taps[-5] if len(taps) > 4 else None,
        classifier=classifier_path(model),
        notes="from timm's feature_info",
    )
