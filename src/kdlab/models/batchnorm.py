"""Frozen BatchNorm: every BN layer stays in eval mode, whatever ``train()`` says (DomainBed, SWAD,
EoA and WAKD all train this way). The layers keep their running statistics (ImageNet's, for a
pretrained backbone) and normalize with them; their affine weight and bias still train.

Implemented by switching each BN layer's class to a subclass whose ``train()`` always means eval,
so the model's ``forward``, parameter names and ``state_dict`` are unchanged and copies stay frozen.
"""

from __future__ import annotations

from functools import cache

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _EvalModeNorm:
    """Mixin: ``train(mode)`` leaves the layer in eval mode."""

    def train(self, mode: bool = True) -> nn.Module:
        return super().train(False)


@cache
def _frozen_class(cls: type[nn.Module]) -> type[nn.Module]:
    return type(f"Frozen{cls.__name__}", (_EvalModeNorm, cls), {"__module__": __name__})


def freeze_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm layer of ``model`` permanently in eval mode; returns how many there were."""
    count = 0
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not isinstance(module, _EvalModeNorm):
            module.__class__ = _frozen_class(type(module))
            module.eval()
            count += 1
    return count


def is_frozen_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, _EvalModeNorm)
