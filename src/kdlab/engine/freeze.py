"""Freeze parts of a distiller for one stage: parameters stop training, norm layers stop updating."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from kdlab.config.compare import is_under
from kdlab.core.errors import ConfigError
from kdlab.core.registry import closest


def check_paths(module: nn.Module, paths: Iterable[str], key: str) -> None:
    """Every path must name a submodule; otherwise one line naming the key and the closest path."""
    names = [name for name, _ in module.named_modules() if name]
    for path in paths:
        if path not in names:
            raise ConfigError(f"{key}: no module {path!r} in the distiller{closest(path, names)} "
                              "(paths start with 'student.' or a method part's name)")


class StageFreezer:
    """Applies a stage's ``freeze`` / ``train_only`` on top of the parameters' own trainability."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.base = {name: p.requires_grad for name, p in module.named_parameters()}
        self.frozen_leaves: list[nn.Module] = []

    def is_frozen(self, path: str, freeze: tuple[str, ...], train_only: tuple[str, ...] | None) -> bool:
        if is_under(path, freeze):
            return True
        return train_only is not None and not is_under(path, train_only)

    def trains(self, name: str, freeze: tuple[str, ...], train_only: tuple[str, ...] | None) -> bool:
        """Whether parameter ``name`` trains in a stage with this ``freeze`` / ``train_only``."""
        return self.base[name] and not self.is_frozen(name, freeze, train_only)

    def trainable(self, freeze: tuple[str, ...], train_only: tuple[str, ...] | None) -> int:
        """How many parameter values a stage with this ``freeze`` / ``train_only`` would train."""
        return sum(p.numel() for name, p in self.module.named_parameters()
                   if self.trains(name, freeze, train_only))

    def apply(self, freeze: tuple[str, ...], train_only: tuple[str, ...] | None) -> None:
        for name, param in self.module.named_parameters():
            param.requires_grad_(self.trains(name, freeze, train_only))
        self.frozen_leaves = [
            m for name, m in self.module.named_modules()
            if name and not any(m.children()) and self.is_frozen(name, freeze, train_only)
        ]

    def train(self) -> None:
        """Put the module in train mode, except the frozen leaves (BatchNorm keeps its statistics)."""
        self.module.train()
        for leaf in self.frozen_leaves:
            leaf.eval()
