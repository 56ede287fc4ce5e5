"""Model registry: the CIFAR zoo and small CNNs by name, torchvision and timm models by prefix.

``build_model("resnet8x4", num_classes=100)`` builds a zoo model;
``build_model("torchvision:resnet18", num_classes=10)`` builds a stock torchvision model with its
classification head resized; ``build_model("timm:resnet18", ...)`` does the same through timm when it
is installed. :func:`stage_preset` gives the stage tap points of any of them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from kdlab.core.registry import Registry
from kdlab.models import timm_zoo, torchvision_zoo
from kdlab.models.errors import ModelError
from kdlab.models.presets import StagePreset
from kdlab.models.surgery import load_weights


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: a factory ``(num_classes, **kwargs) -> nn.Module`` and its stage preset."""

    factory: Callable[..., nn.Module]
    preset: StagePreset
    family: str


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, *, family: str, preset: StagePreset) -> Callable:
    """Decorator registering a zoo model factory under ``name``."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name)(ModelSpec(factory, preset, family))
        return factory

    return add


def list_models() -> list[str]:
    """Names of the zoo models; torchvision and timm models are built by prefix instead."""
    return MODELS.names()


def _check_kwargs(name: str, factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    bad = sorted(set(kwargs) - set(params))
    if bad:
        accepted = ", ".join(p for p in params if p != "num_classes")
        raise ModelError(
            f"model {name!r} got unexpected keyword argument(s) {', '.join(bad)}; it accepts: {accepted}"
        )


def build_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool | str | os.PathLike[str] = False,
    in_channels: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name with a ``num_classes``-way classifier.

    ``name`` is a zoo name (:func:`list_models`), ``"torchvision:NAME"`` or ``"timm:NAME"``.
    ``pretrained`` is ``False`` (random init), ``True`` (the library's default weights; not for zoo
    models) or the path of a state dict saved from the same architecture, loaded before the head is
    resized to ``num_classes``. ``in_channels`` changes the input channels (``None`` keeps the model's
    default). Other keyword arguments go to the model's constructor.
    """
    if name.startswith(torchvision_zoo.PREFIX):
        return torchvision_zoo.build_torchvision(
            name.removeprefix(torchvision_zoo.PREFIX), num_classes, pretrained, in_channels, kwargs
        )
    if name.startswith(timm_zoo.PREFIX):
        return timm_zoo.build_timm(
            name.removeprefix(timm_zoo.PREFIX), num_classes, pretrained, in_channels, kwargs
        )
    spec = MODELS.get(name)
    if in_channels is not None:
        kwargs = {**kwargs, "in_channels": in_channels}
    _check_kwargs(name, spec.factory, kwargs)
    if pretrained is True:
        raise ModelError(
            f"zoo model {name!r} has no downloadable weights; pass the path of a saved state dict instead"
        )
    model = spec.factory(num_classes=num_classes, **kwargs)
    if pretrained:
        load_weights(model, pretrained, spec.preset.classifier, num_classes)
    return model


def stage_preset(name: str, model: nn.Module | None = None) -> StagePreset:
    """The stage tap points of model ``name``.

    Zoo models have hand-written presets. For torchvision and timm models ``model`` (built when not
    given) is inspected: torchvision ResNet families have a fixed preset, timm models use their
    ``feature_info``, and other families are found by where a dummy forward changes resolution.
    """
    if name.startswith(torchvision_zoo.PREFIX):
        return torchvision_zoo.torchvision_preset(name.removeprefix(torchvision_zoo.PREFIX), model)
    if name.startswith(timm_zoo.PREFIX):
        return timm_zoo.timm_preset(name.removeprefix(timm_zoo.PREFIX), model)
    return MODELS.get(name).preset
