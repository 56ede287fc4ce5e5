"""Read intermediate features of any model through forward hooks on named modules.

A model's ``forward`` is never changed: a :class:`FeatureTaps` registers hooks on modules found by
dotted path (``"layer3.1.conv2"``, as in ``model.named_modules()``) and records either the module's
output or its first positional input. Tapping a module's input is how pre-activation features are
read (the input of a block's final ReLU).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from kdlab.core.registry import closest
from kdlab.models.errors import ModelError


@dataclass(frozen=True)
class TapPoint:
    """A module path and whether to record that module's output or its input."""

    path: str
    kind: Literal["output", "input"] = "output"

    @classmethod
    def parse(cls, spec: str | TapPoint) -> TapPoint:
        """``"layer3"`` taps an output, ``"layer3.0.relu:input"`` an input."""
        if isinstance(spec, TapPoint):
            return spec
        path, _, kind = spec.partition(":")
        if kind not in ("", "output", "input"):
            raise ModelError(f"tap {spec!r}: the suffix after ':' must be 'input' or 'output'")
        return cls(path, "input" if kind == "input" else "output")


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path, or a ValueError naming the closest existing path."""
    modules = dict(model.named_modules())
    if path not in modules:
        raise ModelError(
            f"{type(model).__name__} has no module {path!r}{closest(path, list(modules))}"
        )
    return modules[path]


class FeatureTaps:
    """Records features at tap points on every forward of ``model``.

    Features of the latest forward are in :attr:`features`, in the order the taps were given.
    Call :meth:`close` (or use as a context manager) to remove the hooks.
    """

    def __init__(self, model: nn.Module, taps: Iterable[str | TapPoint]) -> None:
        self.taps = [TapPoint.parse(t) for t in taps]
        self._store: dict[int, Tensor] = {}
        self._handles = []
        for i, tap in enumerate(self.taps):
            module = find_module(model, tap.path)
            if tap.kind == "output":
                handle = module.register_forward_hook(self._record_output(i))
            else:
                handle = module.register_forward_pre_hook(self._record_input(i))
            self._handles.append(handle)

    def _record_output(self, i: int):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            self._store[i] = output

        return hook

    def _record_input(self, i: int):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            self._store[i] = inputs[0]

        return hook

    @property
    def features(self) -> list[Tensor]:
        missing = [self.taps[i].path for i in range(len(self.taps)) if i not in self._store]
        if missing:
            raise RuntimeError(f"tap points not reached in the last forward: {', '.join(missing)}")
        return [self._store[i] for i in range(len(self.taps))]

    def clear(self) -> None:
        self._store.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._store.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def has_output_hooks(module: nn.Module) -> bool:
    """Whether a forward hook (something reading the module's output) is registered on ``module``."""
    return bool(module._forward_hooks)


def has_input_hooks(module: nn.Module) -> bool:
    """Whether a forward pre-hook (something reading the module's input) is registered on ``module``."""
    return bool(module._forward_pre_hooks)


@contextlib.contextmanager
def hooks_suspended(model: nn.Module) -> Iterator[None]:
    """No forward (pre-)hook of ``model``'s modules runs inside the block (a trace calls ``forward`` on
    proxies, which a tap must not record); every hook is back after it."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    for module, _, _ in saved:
        module._forward_hooks, module._forward_pre_hooks = OrderedDict(), OrderedDict()
    try:
        yield
    finally:
        for module, forward, pre in saved:
            module._forward_hooks, module._forward_pre_hooks = forward, pre


def drop_hooks(model: nn.Module) -> None:
    """Remove every forward (pre-)hook of ``model``'s modules (for a copy that must not record features)."""
    for module in model.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
