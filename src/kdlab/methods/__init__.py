"""Distillation methods: one file per method, each registered under an explicit name.

Every module in this package is imported here so that its ``@register_method`` runs; adding a
method is adding a file.
"""

import importlib
import pkgutil

from kdlab.methods.base import DistillContext, Distiller, DistillOutput, StageInfo, StepContext
from kdlab.methods.kd import kd_loss
from kdlab.methods.registry import METHODS, build_distiller, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "DistillContext",
    "DistillOutput",
    "Distiller",
    "StageInfo",
    "StepContext",
    "build_distiller",
    "kd_loss",
    "register_method",
]
