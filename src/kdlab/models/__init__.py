"""Models by name: the CIFAR zoo, small CNNs, torchvision and timm; stage presets and feature taps."""

from kdlab.models import cifar, domainbed_cnn, small_cnn
from kdlab.models.errors import ModelError
from kdlab.models.hooks import FeatureTaps, TapPoint
from kdlab.models.presets import StagePreset
from kdlab.models.probe import probe_forward
from kdlab.models.registry import build_model, list_models, register_model, stage_preset

__all__ = [
    "FeatureTaps",
    "ModelError",
    "StagePreset",
    "TapPoint",
    "build_model",
    "cifar",
    "domainbed_cnn",
    "list_models",
    "probe_forward",
    "register_model",
    "small_cnn",
    "stage_preset",
]
