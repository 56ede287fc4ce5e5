"""Distillation methods: one file per method, each registered under an explicit name."""

from kdlab.methods import ce, kd  # noqa: F401  (registration)
from kdlab.methods.base import DistillContext, Distiller, DistillOutput
from kdlab.methods.kd import kd_loss
from kdlab.methods.registry import METHODS, build_distiller, register_method

__all__ = [
    "METHODS",
    "DistillContext",
    "DistillOutput",
    "Distiller",
    "build_distiller",
    "kd_loss",
    "register_method",
]
