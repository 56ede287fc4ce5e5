"""Typed run configuration, YAML loading and dotted overrides."""

from kdlab.config.load import ConfigError, apply_overrides, dump_config, load_config, validate
from kdlab.config.schema import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
    "validate",
]
