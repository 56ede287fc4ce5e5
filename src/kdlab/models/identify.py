"""The registry name of a model built outside kdlab, so that a run made from an ``nn.Module`` can be rebuilt.

A module is named by the first candidate that rebuilds it exactly: a model of the same class whose
``state_dict`` has the same keys and shapes and which, given the module's weights, computes the same
outputs on a seeded random batch. Candidates: timm's own record of the architecture
(``pretrained_cfg["architecture"]``), the torchvision builders of the module's class's module, and the
kdlab zoo entries built in the module's class's module. Candidates are built on the ``meta`` device to
compare shapes, so trying them allocates nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torchvision.models as tv_models
from torch import nn

from kdlab.models import timm_zoo, torchvision_zoo
from kdlab.models.registry import MODELS, build_model

#: the ``name`` a run records for a module kdlab could not name
MODULE_PREFIX = "module:"


def module_name(model: nn.Module) -> str:
    """What a run records for a module it cannot rebuild: ``module:`` and its class name."""
    return f"{MODULE_PREFIX}{type(model).__name__}"


def registry_name(model: nn.Module, num_classes: int, input_shape: tuple[int, int, int]) -> str | None:
    """The kdlab name (``resnet8``, ``torchvision:resnet18``, ``timm:...``) that rebuilds ``model`` for
    ``num_classes`` classes and ``input_shape`` inputs, or None."""
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    for name in _candidates(model):
        try:
            with torch.device("meta"):
                rebuilt = build_model(name, num_classes, in_channels=input_shape[0])
        except Exception:  # noqa: BLE001 - a candidate that does not build is not the model
            continue
        if type(rebuilt) is type(model) and shapes == {k: v.shape for k, v in rebuilt.state_dict().items()} \
                and _same_outputs(model, name, num_classes, input_shape):
            return name
    return None


def _candidates(model: nn.Module) -> Iterator[str]:
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if isinstance(architecture, str):
        yield f"{timm_zoo.PREFIX}{architecture}"
    module = type(model).__module__
    if module.startswith("torchvision.models."):
        for name in tv_models.list_models():
            if tv_models.get_model_builder(name).__module__ == module:
                yield f"{torchvision_zoo.PREFIX}{name}"
    for name in MODELS.names():
        if MODELS.get(name).factory.__module__ == module:
            yield name


def _same_outputs(model: nn.Module, name: str, num_classes: int, input_shape: tuple[int, int, int]) -> bool:
    """Whether ``name`` built with ``model``'s weights computes ``model``'s outputs (on the CPU, fp32; on a
    copy without the module's hooks, so that the check is invisible to them)."""
    original = copy.deepcopy(model).float().cpu().eval()
    for module in original.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    rebuilt = build_model(name, num_classes, in_channels=input_shape[0]).eval()
    rebuilt.load_state_dict(original.state_dict())
    batch = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(original(batch), rebuilt(batch), rtol=1e-4, atol=1e-5)
