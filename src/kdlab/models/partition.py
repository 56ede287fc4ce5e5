"""Split a model into the segments a forward pass runs between tap points, by module path.

Segment ``k`` (``k < K`` for ``K`` taps) holds the modules that run after tap ``k - 1`` is reached and
until tap ``k`` is (a module's output is reached once its forward returns, its input just before its
forward starts); segment ``K`` holds what runs after the last tap (a neck and the classifier). The
order comes from a dummy forward with hooks on the leaf modules, so it works for any model whose
forward is fixed, without knowing its code. Each segment is given as the fewest module paths that
cover exactly its leaves (``layer1`` rather than every conv of it), ready for a stage's ``freeze`` or
``train_only``. Leaves the forward never runs (e.g. a pooling layer used only for larger inputs)
belong to no segment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdlab.models.errors import ModelError
from kdlab.models.hooks import TapPoint, find_module


def execution_order(model: nn.Module, taps: Sequence[TapPoint],
                    input_shape: Sequence[int]) -> list[list[str]]:
    """Leaf-module paths of the ``len(taps) + 1`` segments of a forward, each in the order they run.

    Raises ValueError when the taps are not reached in the order given.
    """
    events: list[tuple[str, str]] = []
    handles = []

    def mark(index: int):
        def hook(*_args: object) -> None:
            events.append(("tap", str(index)))
        return hook

    for i, tap in enumerate(taps):
        module = find_module(model, tap.path)
        if tap.kind == "output":
            handles.append(module.register_forward_hook(mark(i)))
        else:
            handles.append(module.register_forward_pre_hook(mark(i)))
    for name, module in model.named_modules():
        if name and not any(module.children()):
            handles.append(module.register_forward_pre_hook(
                lambda *_args, _name=name: events.append(("leaf", _name))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    segments: list[list[str]] = [[] for _ in range(len(taps) + 1)]
    reached: list[int] = []
    seen: set[str] = set()
    for kind, value in events:
        if kind == "tap":
            index = int(value)
            if index not in reached:
                if index != len(reached):
                    order = ", ".join(taps[i].path for i in (*reached, index))
                    raise ModelError(f"tap points are reached out of order ({order}); list them in the "
                                     "order the forward runs them")
                reached.append(index)
        elif value not in seen:
            seen.add(value)
            segments[len(reached)].append(value)
    if len(reached) != len(taps):
        missing = ", ".join(taps[i].path for i in range(len(taps)) if i not in reached)
        raise ModelError(f"tap points not reached by a forward: {missing}")
    return segments


def covering_paths(model: nn.Module, leaves: Sequence[str]) -> list[str]:
    """The fewest module paths whose leaves are exactly ``leaves`` (modules with no leaf are skipped)."""
    chosen = set(leaves)
    covered: dict[str, bool] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        below = [n for n, m in module.named_modules(prefix=name) if not any(m.children())]
        covered[name] = all(n in chosen for n in below)
    paths = []
    for name in covered:
        parent = name.rpartition(".")[0]
        if covered[name] and not (parent and covered.get(parent, False)):
            paths.append(name)
    return paths


def segment_paths(model: nn.Module, taps: Sequence[TapPoint], input_shape: Sequence[int]) -> list[list[str]]:
    """:func:`execution_order` with each segment reduced to its :func:`covering_paths`."""
    return [covering_paths(model, leaves) for leaves in execution_order(model, taps, input_shape)]
