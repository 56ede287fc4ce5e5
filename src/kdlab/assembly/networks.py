"""A run's networks from their config sections: built by name, probed, loaded, normalized."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kdlab.assembly.weights import load_model_weights
from kdlab.config.schema import ModelConfig
from kdlab.core.errors import ConfigError
from kdlab.core.registry import UnknownNameError
from kdlab.data import DataBundle
from kdlab.models import ModelError, build_model, probe_forward
from kdlab.models.batchnorm import freeze_batchnorm
from kdlab.models.surgery import WeightFileError


def build_network(config: ModelConfig, data: DataBundle, key: str) -> nn.Module:
    """The model of section ``key`` (``student``, ``teacher``, ``teachers.N``) for ``data``: built by name,
    checked to take the data's images, with its checkpoint loaded and BatchNorm frozen if asked."""
    try:
        model = build_model(config.name, data.num_classes, pretrained=config.pretrained,
                            in_channels=data.input_shape[0], **config.kwargs)
    except WeightFileError as exc:
        raise ConfigError(f"{key}.pretrained: {exc}") from None
    except (UnknownNameError, ModelError) as exc:
        raise ConfigError(f"{key}.name: {exc}") from None
    check_input_shape(model, data.input_shape, f"{key}.name")
    if config.checkpoint is not None:
        load_model_weights(model, config.checkpoint, f"{key}.checkpoint")
    if config.freeze_bn:
        freeze_batchnorm(model)
    return model


def check_input_shape(model: nn.Module, shape: Sequence[int], key: str) -> None:
    """A model that cannot take two zero images of the data's ``shape`` (too small for its pooling,
    say) is refused before training instead of failing at its first step."""
    try:
        probe_forward(model, shape)
    except RuntimeError as exc:
        raise ConfigError(f"{key}: {type(model).__name__} cannot take the data's {'x'.join(map(str, shape))} "
                          f"images ({str(exc).splitlines()[0][:160]}); change data.image_size or the model"
                          ) from None


def normalization(config: ModelConfig | None, data: DataBundle) -> tuple[list[float], list[float]]:
    """The input mean/std the model of ``config`` expects (default: the data's)."""
    if config is None or config.mean is None:
        return list(data.mean), list(data.std)
    if config.std is None:
        raise ConfigError("a model's 'mean' needs its 'std' too")
    channels = data.input_shape[0]
    if len(config.mean) != channels or len(config.std) != channels:
        raise ConfigError(f"a model's mean/std have {len(config.mean)}/{len(config.std)} values for the "
                          f"data's {channels} channels")
    return config.mean, config.std

