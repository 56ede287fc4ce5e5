"""Find the stages of an unknown CNN by where its spatial resolution changes.

A dummy forward is run with hooks on the model's top-level children. A child that reduces the
resolution more than once (by 3x or more: a whole feature extractor such as torchvision's
``features``) or that never runs itself (an ``nn.ModuleList``) is replaced by its own children and
the forward is run again. In execution order, the modules with 4-D outputs up to the global pooling
are grouped by output resolution (a shrink by less than 1.5x, as from an unpadded conv, stays in the
group); a group is a stage and its last module is the stage end. Groups without parameters (a lone
pooling layer) are dropped. The last four groups are stages 1..4 and the group before them, if any,
is the stem. The classifier is the last ``nn.Linear``.

Channels-first outputs are assumed: models whose stages return channels-last maps (Swin) and
token-based models (ViT) are not supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdlab.models.errors import ModelError
from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_MAX_EXPANSIONS = 4


@dataclass
class _Call:
    path: str
    module: nn.Module
    in_size: tuple[int, int] | None
    out_size: tuple[int, int] | None


def last_linear(model: nn.Module) -> str:
    """Path of the last ``nn.Linear`` registered in ``model``: the classifier of a standard CNN."""
    paths = [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not paths:
        raise ModelError(f"{type(model).__name__} has no nn.Linear classifier")
    return paths[-1]


def input_channels(model: nn.Module) -> int:
    """Input channels of the first registered ``nn.Conv2d`` (3 when there is none)."""
    return next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)


def _size(x: object) -> tuple[int, int] | None:
    return (int(x.shape[-2]), int(x.shape[-1])) if isinstance(x, Tensor) and x.dim() == 4 else None


def _same_level(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two map sizes belong to one stage: equal up to a small shrink of unpadded convs."""
    return a[0] / 1.5 < b[0] <= a[0] and a[1] / 1.5 < b[1] <= a[1]


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _trace(model: nn.Module, candidates: list[tuple[str, nn.Module]], image: Tensor) -> list[_Call]:
    calls: dict[str, _Call] = {}

    def recorder(path: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            in_size = _size(inputs[0]) if inputs else None
            calls[path] = _Call(path, module, in_size, _size(output))

        return hook

    handles = [m.register_forward_hook(recorder(p)) for p, m in candidates]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(image)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return list(calls.values())


def _expand(candidates: list[tuple[str, nn.Module]], calls: list[_Call]) -> list[tuple[str, nn.Module]]:
    by_path = {call.path: call for call in calls}
    expanded = []
    for path, module in candidates:
        call = by_path.get(path)
        spans = (
            call is not None
            and call.in_size is not None
            and call.out_size is not None
            and call.in_size[0] >= 3 * call.out_size[0]
        )
        children = [(f"{path}.{name}", child) for name, child in module.named_children()]
        if children and (call is None or spans):
            expanded += children
        else:
            expanded.append((path, module))
    return expanded


def detect_stage_preset(model: nn.Module, input_size: int = 224) -> StagePreset:
    """A :class:`StagePreset` for ``model`` found from a ``1 x C x input_size x input_size`` forward."""
    device = next(model.parameters()).device
    image = torch.zeros(1, input_channels(model), input_size, input_size, device=device)
    candidates = list(model.named_children())
    calls = _trace(model, candidates, image)
    for _ in range(_MAX_EXPANSIONS):
        expanded = _expand(candidates, calls)
        if [p for p, _ in expanded] == [p for p, _ in candidates]:
            break
        candidates = expanded
        calls = _trace(model, candidates, image)
    groups: list[list[_Call]] = []
    for call in calls:
        if call.out_size is None or isinstance(call.module, _GLOBAL_POOLS):
            break
        if groups and _same_level(groups[-1][0].out_size, call.out_size):
            groups[-1].append(call)
        else:
            groups.append([call])
    groups = [g for g in groups if any(_has_parameters(call.module) for call in g)]
    if len(groups) < 2:
        raise ModelError(
            f"could not find the stages of {type(model).__name__}: fewer than two spatial resolutions "
            "before the global pooling; pass explicit tap points instead"
        )
    ends = [TapPoint(group[-1].path) for group in groups]
    return StagePreset(
        stages=tuple(ends[-4:]),
        stem=ends[-5] if len(ends) > 4 else None,
        classifier=last_linear(model),
        notes=f"detected from a {input_size}x{input_size} forward",
    )
