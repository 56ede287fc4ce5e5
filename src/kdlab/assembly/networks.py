"""A run's networks from their config sections: built by name, probed, loaded, normalized."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from kdlab.assembly.weights import load_model_weights, result_checkpoint
from kdlab.config.schema import ModelConfig, RunConfig
from kdlab.core import checkpoint
from kdlab.core.errors import ConfigError
from kdlab.core.registry import UnknownNameError
from kdlab.data import DATASETS, DataBundle, DataFacts
from kdlab.models import ModelError, build_model, probe_forward, timm_zoo, torchvision_zoo
from kdlab.models.batchnorm import freeze_batchnorm
from kdlab.models.identify import MODULE_PREFIX, module_name, registry_name
from kdlab.models.surgery import WeightFileError


def build_network(config: ModelConfig, data: DataBundle | DataFacts, key: str) -> nn.Module:
    """The model of section ``key`` (``student``, ``teacher``, ``teachers.N``) for ``data``: built by name,
    checked to take the data's images, with its checkpoint loaded and BatchNorm frozen if asked."""
    if config.name.startswith(MODULE_PREFIX):
        raise ConfigError(f"{key}.name: {config.name!r} was a module given from Python, which kdlab cannot "
                          f"build; build it again and pass it: kdlab.load_run(RUN_DIR, {key.split('.')[0]}="
                          "module)")
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


def name_given_modules(config: RunConfig, data: DataBundle, student: nn.Module | None,
                       teacher: nn.Module | None) -> RunConfig:
    """``config`` with the student and teacher sections of given modules named by what rebuilds them
    (:func:`~kdlab.models.identify.registry_name`), else ``module:CLASS``."""
    config = config.model_copy(deep=True)
    for section, module in ((config.student, student), (config.teacher, teacher)):
        if module is not None and section is not None:
            section.name = registry_name(module, data.num_classes, data.input_shape) or module_name(module)
    return config


def check_input_shape(model: nn.Module, shape: Sequence[int], key: str) -> None:
    """A model that cannot take two zero images of the data's ``shape`` (too small for its pooling,
    say) is refused before training instead of failing at its first step."""
    try:
        probe_forward(model, shape)
    except RuntimeError as exc:
        raise ConfigError(f"{key}: {type(model).__name__} cannot take the data's {'x'.join(map(str, shape))} "
                          f"images ({str(exc).splitlines()[0][:160]}); change data.image_size or the model"
                          ) from None


def normalization(config: ModelConfig | None, data: DataBundle, key: str = "student",
                  trained: tuple[list[float], list[float]] | None = None) -> tuple[list[float], list[float]]:
    """The input mean/std the model of section ``key`` expects: its ``mean``/``std``, else ``trained``
    (what its weights were trained with), else the data's; an explicit setting that contradicts
    ``trained`` is one line."""
    if config is None:
        return list(data.mean), list(data.std)
    if config.mean is None:
        mean, std = trained or (list(data.mean), list(data.std))
    elif config.std is None:
        raise ConfigError(f"{key}.mean: a model's 'mean' needs its 'std' too")
    else:
        mean, std = list(config.mean), list(config.std)
        if trained is not None and not _close(trained, (mean, std)):
            raise ConfigError(f"{key}.mean: {mean}/{std} differ from the normalization its weights were "
                              f"trained with, {trained[0]}/{trained[1]}; remove {key}.mean/std to use those")
    channels = data.input_shape[0]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"{key}.mean: the model's mean/std have {len(mean)}/{len(std)} values for the "
                          f"data's {channels} channels")
    return mean, std


def teacher_normalization(config: ModelConfig | None, data: DataBundle, key: str
                          ) -> tuple[list[float], list[float]]:
    """A teacher's input mean/std: as :func:`normalization`, with the statistics its weights were
    trained with (:func:`trained_normalization`) in place of the data's."""
    trained = trained_normalization(config, key) if config is not None else None
    return normalization(config, data, key, trained)


def _close(a: tuple[list[float], list[float]], b: tuple[list[float], list[float]]) -> bool:
    return all(len(x) == len(y) and all(abs(u - v) < 1e-6 for u, v in zip(x, y, strict=True))
               for x, y in zip(a, b, strict=True))


def trained_normalization(config: ModelConfig, key: str) -> tuple[list[float], list[float]] | None:
    """The normalization the weights of ``config`` were trained with, when they say: a kdlab run's
    (its student's ``mean``/``std``, else its data's, else its dataset's defaults) or torchvision's or
    timm's default weights'; None for random weights, plain state_dict files and statistics a run computed
    from its own images."""
    if config.checkpoint is not None:
        run = checkpoint.read_config(result_checkpoint(config.checkpoint, f"{key}.checkpoint"))
        return run_normalization(run) if run is not None else None
    if config.pretrained is True and config.name.startswith(torchvision_zoo.PREFIX):
        return torchvision_zoo.weights_normalization(config.name.removeprefix(torchvision_zoo.PREFIX))
    if config.pretrained is True and config.name.startswith(timm_zoo.PREFIX):
        return timm_zoo.weights_normalization(config.name.removeprefix(timm_zoo.PREFIX))
    return None


def run_normalization(run: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """The input normalization a kdlab run (its saved config tree) trained its student with."""
    for section in (run.get("student") or {}, run.get("data") or {}):
        if section.get("mean") is not None and section.get("std") is not None:
            return list(section["mean"]), list(section["std"])
    name = (run.get("data") or {}).get("name")
    spec = DATASETS.get(name) if isinstance(name, str) and name in DATASETS else None
    if spec is not None and spec.mean is not None:
        return list(spec.mean), list(spec.std)
    return None

