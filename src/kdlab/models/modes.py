"""Temporarily switching a module tree to eval mode without losing per-submodule modes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside the block; each one's own mode restored after.

    ``module.train(previous)`` would not do: it sets one mode on the whole tree, waking frozen
    BatchNorm layers (``freeze_bn``) or a frozen teacher that were deliberately left in eval mode.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
