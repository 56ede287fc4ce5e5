"""One sample of a user's dataset, read into kdlab's form: a C x H x W image tensor and a class id.

A sample is a tuple or list ``(image, label, ...)`` or a mapping with an image under one of
:data:`IMAGE_KEYS` and a label under one of :data:`LABEL_KEYS`. An image is a PIL image, a numpy array or
a tensor (H x W grayscale, C x H x W, or H x W x C as a PIL-converted array); uint8 images keep the
0..255 scale, float images must be on the 0..1 scale (kdlab normalizes them; see :mod:`kdlab.data.user`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from kdlab.data.errors import DatasetFormatError

IMAGE_KEYS = ("image", "img", "input", "inputs", "pixel_values", "x")
LABEL_KEYS = ("label", "target", "labels", "targets", "y")


def split_sample(sample: Any, where: str) -> tuple[Any, Any]:
    """The ``(image, label)`` of one sample (tuple or mapping); anything else is one line naming ``where``."""
    if isinstance(sample, Mapping):
        image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        label = next((sample[k] for k in LABEL_KEYS if k in sample), None)
        if image is None or label is None:
            raise DatasetFormatError(f"{where}: a sample is a dict with keys {sorted(sample)}; kdlab reads "
                                     f"the image from one of {', '.join(IMAGE_KEYS)} and the label from one "
                                     f"of {', '.join(LABEL_KEYS)}")
        return image, label
    if isinstance(sample, tuple | list) and len(sample) >= 2:
        return sample[0], sample[1]
    raise DatasetFormatError(f"{where}: a sample is a {type(sample).__name__}; expected (image, label) or a "
                             "dict with an image and a label")


def image_tensor(image: Any, where: str) -> Tensor:
    """``image`` as a C x H x W tensor (uint8 or floating), from PIL, numpy or a tensor."""
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(image)
    if isinstance(image, np.ndarray):
        array = torch.from_numpy(np.ascontiguousarray(image))
        image = array.permute(2, 0, 1) if array.ndim == 3 and array.shape[-1] in (1, 3, 4) else array
    if not isinstance(image, Tensor):
        raise DatasetFormatError(f"{where}: an image is a {type(image).__name__}; expected a PIL image, a "
                                 "numpy array or a tensor")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3:
        raise DatasetFormatError(f"{where}: an image has shape {tuple(image.shape)}; expected C x H x W or "
                                 "H x W")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise DatasetFormatError(f"{where}: images of dtype {image.dtype}; expected uint8 (0..255) or float "
                                 "(0..1)")
    return image


def class_id(label: Any, where: str) -> int:
    """``label`` (an int, or a one-element tensor or numpy value) as an int."""
    if isinstance(label, Tensor):
        label = label.item() if label.numel() == 1 else label
    elif isinstance(label, np.ndarray | np.generic):
        label = label.item() if label.size == 1 else label
    if isinstance(label, bool) or not isinstance(label, int):
        raise DatasetFormatError(f"{where}: a label is {label!r}; expected one integer class id")
    return label
