"""Fingerprints that tie a cache to what produced it: the teacher's weights and the training images."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn


def module_sha256(model: nn.Module) -> str:
    """sha256 over a module's state_dict: every entry's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tensor_sha256(tensor: Tensor) -> str:
    """sha256 over a tensor's shape, dtype and bytes."""
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    digest = hashlib.sha256(f"{array.dtype}|{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def files_sha256(files: Iterable[str]) -> str:
    """sha256 over the file names of a lazily decoded split, in order."""
    digest = hashlib.sha256()
    for name in files:
        digest.update(f"{name}\n".encode())
    return digest.hexdigest()
