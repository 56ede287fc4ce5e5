"""Stock torchvision classifiers by name (``torchvision:NAME``), with their heads resized.

Weights come from torchvision's weights API: ``pretrained=True`` takes
``get_model_weights(NAME).DEFAULT``, read from torch's hub cache (``$TORCH_HOME/hub/checkpoints``),
where torchvision downloads it on first use; offline, a copy of the file placed there works the same.
A path loads a state dict saved from the same architecture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tv_models

from kdlab.core.registry import UnknownNameError, closest
from kdlab.models.detect import detect_stage_preset, last_linear
from kdlab.models.errors import ModelError
from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset
from kdlab.models.surgery import adapt_input_conv, load_weights, resize_head

PREFIX = "torchvision:"

RESNET_PRESET = StagePreset(
    stages=tuple(TapPoint(f"layer{i}") for i in (1, 2, 3, 4)),
    stem=TapPoint("relu"),
    classifier="fc",
    notes="torchvision blocks apply one in-place ReLU module twice: no pre-activation taps",
)
RESNET_FAMILIES = ("resnet", "resnext", "wide_resnet")


def _check_name(name: str) -> None:
    known = tv_models.list_models(module=tv_models)
    if name not in known:
        raise UnknownNameError(f"unknown torchvision model {name!r}{closest(name, known)}")


def classifier_path(name: str, model: nn.Module) -> str:
    """Module path of the classification head of torchvision model ``name``."""
    return "fc" if name.startswith(RESNET_FAMILIES) else last_linear(model)


def default_weights(name: str) -> tv_models.WeightsEnum:
    """torchvision's default weights of ``name``, present in torch's hub cache (downloaded if not):
    a failed download is one line saying where to put the file instead."""
    weights = tv_models.get_model_weights(name).DEFAULT
    try:
        weights.get_state_dict(progress=False)
    except (OSError, RuntimeError) as exc:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise ModelError(
            f"pretrained weights of torchvision model {name!r} could not be fetched ({type(exc).__name__}: "
            f"{reason}); without internet, copy the file {weights.url} to {cached}, "
            "or set pretrained to the path of a saved state_dict") from None
    return weights


def weights_normalization(name: str) -> tuple[list[float], list[float]]:
    """The input mean/std of torchvision model ``name``'s default weights (read from their metadata)."""
    transform = tv_models.get_model_weights(name).DEFAULT.transforms()
    return list(transform.mean), list(transform.std)


def build_torchvision(
    name: str,
    num_classes: int,
    pretrained: bool | str | os.PathLike[str],
    in_channels: int | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    """``torchvision.models.get_model(name)`` with ``num_classes`` outputs and ``in_channels`` inputs."""
    _check_name(name)
    try:
        if pretrained is True:
            model = tv_models.get_model(name, weights=default_weights(name), **kwargs)
        else:
            model = tv_models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ModelError(f"torchvision model {name!r}: {err}") from err
    if in_channels is not None:
        adapt_input_conv(model, in_channels, keep_weights=pretrained is True)
    head = classifier_path(name, model)
    if pretrained is True:
        resize_head(model, head, num_classes)
    elif pretrained:
        load_weights(model, pretrained, head, num_classes)
    return model


def torchvision_preset(name: str, model: nn.Module | None = None) -> StagePreset:
    """The hand-written preset of ResNet-like families; otherwise one detected on ``model`` (built
    with random weights when not given)."""
    if name.startswith(RESNET_FAMILIES):
        return RESNET_PRESET
    if model is None:
        model = build_torchvision(name, 1000, False, None, {})
    return detect_stage_preset(model)
