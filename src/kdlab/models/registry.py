"""Model registry: the CIFAR zoo and small CNNs by name, torchvision and timm models by prefix.

``build_model("resnet8x4", num_classes=100)`` builds a zoo model;
``build_model("torchvision:resnet18", num_classes=10)`` builds a stock torchvision model with its
classification head resized; ``build_model("timm:resnet18", ...)`` does the same through timm when it
is installed. :func:`stage_preset` gives the stage tap points of any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from kdlab.models.presets import StagePreset
from kdlab.registry import Registry


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
