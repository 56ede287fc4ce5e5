"""Methods register under an explicit name; the engine finds them only through this registry."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from torch import nn

from kdlab.config.load import ConfigError, explain
from kdlab.config.schema import MethodConfig
from kdlab.core.registry import Registry, UnknownNameError, closest
from kdlab.methods.base import DistillContext, Distiller

METHODS: Registry[type[Distiller]] = Registry("method")


def register_method(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    return METHODS.register(name)


def resolve_weights(defaults: Mapping[str, float], name: str, weights: Mapping[str, float],
                    key: str = "method") -> dict[str, float]:
    """A method's default term weights (``defaults``) updated by the config; unknown terms are an error."""
    unknown = [term for term in weights if term not in defaults]
    if unknown:
        raise ConfigError(
            f"{key}.weights.{unknown[0]}: method {name!r} has no loss term of that name"
            f"{closest(unknown[0], list(defaults))}; its terms are: {', '.join(defaults)}"
        )
    return {**defaults, **weights}


def non_finite_key(value: Any, path: str) -> str | None:
    """The dotted path of the first infinite or NaN float inside nested dicts and lists, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = non_finite_key(item, f"{path}.{key}")
        if found is not None:
            return found
    return None


def resolve_method(config: MethodConfig, source: str = "config", key: str = "method"
                   ) -> tuple[type[Distiller], BaseModel, dict[str, float]]:
    """The method ``config`` names, its parameters validated against the method's own schema (finite
    numbers only) and its loss-term weights; any mistake is one ``ConfigError`` (``source`` says where,
    ``key`` is the config path of the method section)."""
    try:
        method = METHODS.get(config.name)
    except UnknownNameError as exc:
        raise ConfigError(f"{key}.name: {exc}") from None
    try:
        params = method.validate_params(config.params)
    except ValidationError as exc:
        raise ConfigError(explain(exc, source, method.Params, prefix=f"{key}.params.")) from None
    bad = non_finite_key(params.model_dump(), f"{key}.params")
    if bad is not None:
        raise ConfigError(f"{bad}: must be a finite number")
    return method, params, resolve_weights(method.term_defaults(params), config.name, config.weights, key)


def build_distiller(
    config: MethodConfig,
    student: nn.Module,
    teacher: nn.Module | None,
    context: DistillContext,
    *,
    student_norm: tuple[Sequence[float], Sequence[float]] | None = None,
    teacher_norm: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Distiller:
    """Validate ``method.params`` against the method's own schema and build its Distiller."""
    method, params, weights = resolve_method(config)
    return method(student, teacher, params, context, student_norm=student_norm, teacher_norm=teacher_norm,
                  weights=weights, label_smoothing=config.label_smoothing)
