"""timm models by name (``timm:NAME``) when timm is installed (``pip install kdlab[timm]``)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from kdlab.core.registry import UnknownNameError, closest
from kdlab.models.detect import detect_stage_preset, last_linear
from kdlab.models.errors import ModelError
from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset
from kdlab.models.surgery import load_weights

PREFIX = "timm:"
#: the weight files timm reads from a Hugging Face repository, in its order of preference
HUB_FILES = ["model.safetensors", "pytorch_model.bin"]


def _timm() -> ModuleType:
    try:
        return importlib.import_module("timm")
    except ImportError as err:
        raise ModelError("timm models need timm: pip install kdlab[timm]") from err


def classifier_path(model: nn.Module) -> str:
    """The head named by the model's pretrained config, else its last ``nn.Linear``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier")
    names = dict(model.named_modules())
    return head if isinstance(head, str) and isinstance(names.get(head), nn.Linear) else last_linear(model)


def weights_normalization(name: str) -> tuple[list[float], list[float]]:
    """The input mean/std of timm model ``name``'s default pretrained weights (their pretrained config)."""
    cfg = _timm().models.get_pretrained_cfg(name)
    return list(cfg.mean), list(cfg.std)


def cached_weights(timm: ModuleType, name: str) -> str:
    """The local file of timm model ``name``'s default pretrained weights: in the Hugging Face hub cache
    (where timm keeps them) or torch's hub cache (older timm). Nothing is downloaded: weights in neither
    are one line naming the repository or URL and the cache to put them in."""
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id, url = getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)
    hub = importlib.import_module("huggingface_hub")
    files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else HUB_FILES
    candidates = [hub.try_to_load_from_cache(hub_id, f) for f in files] if hub_id else []
    legacy = Path(torch.hub.get_dir()) / "checkpoints"
    if url:
        candidates.append(str(legacy / url.rsplit("/", 1)[-1]))
    found = next((c for c in candidates if isinstance(c, str) and Path(c).is_file()), None)
    if found is not None:
        return found
    if hub_id:
        where = (f"the file {files[0]} of Hugging Face repository {hub_id!r} into "
                 f"{hub.constants.HF_HUB_CACHE} (huggingface-cli download {hub_id}, where there is internet)")
    elif url:
        where = f"{url} into {legacy}"
    else:
        raise ModelError(f"timm model {name!r} has no pretrained weights; set pretrained to a state_dict "
                         "path")
    raise ModelError(f"pretrained weights of timm model {name!r} are not on this machine (kdlab downloads "
                     f"nothing): put {where}, or set pretrained to a state_dict path")


def build_timm(
    name: str,
    num_classes: int,
    pretrained: bool | str | os.PathLike[str],
    in_channels: int | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    """``timm.create_model(name, ...)``; timm itself resizes the head of pretrained weights."""
    timm = _timm()
    if not timm.is_model(name):
        known = timm.list_models()
        raise UnknownNameError(f"unknown timm model {name!r}{closest(name, known)}")
    if in_channels is not None:
        kwargs = {**kwargs, "in_chans": in_channels}
    if pretrained is True:
        kwargs = {**kwargs, "pretrained_cfg_overlay": {"file": cached_weights(timm, name)}}
    try:
        model = timm.create_model(name, pretrained=pretrained is True, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ModelError(f"timm model {name!r}: {err}") from err
    if pretrained and pretrained is not True:
        load_weights(model, pretrained, classifier_path(model), num_classes)
    return model


def timm_preset(name: str, model: nn.Module | None = None) -> StagePreset:
    """Stages from the model's ``feature_info`` (last module at each reduction), else detected on
    ``model`` (built with random weights when not given)."""
    if model is None:
        model = build_timm(name, 1000, False, None, {})
    info = getattr(model, "feature_info", None)
    ends: dict[int, str] = {}
    for entry in info if isinstance(info, list) else []:
        if isinstance(entry, dict) and "module" in entry and "reduction" in entry:
            ends[entry["reduction"]] = entry["module"]
    if len(ends) < 2:
        return detect_stage_preset(model)
    taps = [TapPoint(ends[r]) for r in sorted(ends)]
    return StagePreset(
        stages=tuple(taps[-4:]),
        stem=taps[-5] if len(taps) > 4 else None,
        classifier=classifier_path(model),
        notes="from timm's feature_info",
    )
