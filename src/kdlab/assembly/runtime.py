"""The process a run executes in: its device, its place in a DDP group, its seeded RNGs."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from kdlab.config.schema import TrainConfig
from kdlab.core import distributed
from kdlab.core.errors import ConfigError
from kdlab.core.runtime import Runtime


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available; use cpu or auto")
    return device


def process_runtime(device: torch.device, seed: int) -> Runtime:
    """This process's runtime on ``device``, as it stands (the process group is not joined here)."""
    return Runtime(device, distributed.rank(), distributed.world_size(), seed)


def start_runtime(train: TrainConfig) -> Runtime:
    """Join the process group when launched by ``torchrun``, pick the device and seed every RNG."""
    device = resolve_device(train.device)
    device = distributed.init_from_env(device.type) or device
    seed_everything(train.seed, train.deterministic)
    return process_runtime(device, train.seed)
