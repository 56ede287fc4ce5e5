"""Decoding image files to uint8 RGB tensors: one at a time (lazy path) or many in parallel.

:func:`decode_many` decodes a list of encoded images in chunks on a thread pool; JPEG chunks go through
torchvision's batched ``decode_jpeg``, which runs without the GIL. Other formats use ``decode_image``,
and Pillow for what torchvision cannot read (BMP, TIFF, PPM).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from kdlab.data.errors import DatasetFormatError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
CHUNK = 1024
JPEG_MAGIC = b"\xff\xd8\xff"


def is_image(name: str) -> bool:
    """Whether ``name`` has an image extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _as_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def image_size_of(data: bytes | Path, name: str) -> tuple[int, int]:
    """(height, width) read from the image header only."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetFormatError(f"{name}: cannot read image header ({err})") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DatasetFormatError(f"{path}: cannot read image file ({err})") from None


def decode_bytes(data: bytes, name: str) -> Tensor:
    """An encoded image as a uint8 3 x H x W RGB tensor; unreadable data raises naming ``name``."""
    if not data:
        raise DatasetFormatError(f"{name}: empty image file (0 bytes)")
    try:
        image = decode_image(_as_tensor(data), mode=ImageReadMode.RGB)
        return image[0] if image.ndim == 4 else image
    except RuntimeError:
        pass
    try:
        with Image.open(io.BytesIO(data)) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetFormatError(f"{name}: cannot decode image ({err})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_file(path: str | Path) -> Tensor:
    """The image file at ``path`` as a uint8 3 x H x W RGB tensor."""
    return decode_bytes(_read(Path(path)), str(path))


def fit(image: Tensor, size: int | None, shape: tuple[int, int] | None, name: str) -> Tensor:
    """Resize (shorter side, then center crop) to ``size``, or check the image is ``shape`` (H, W)."""
    if size is not None:
        if image.shape[-2:] == (size, size):
            return image
        return TF.center_crop(TF.resize(image, size, antialias=True), size)
    if shape is not None and tuple(image.shape[-2:]) != shape:
        raise DatasetFormatError(
            f"{name}: image is {image.shape[-2]}x{image.shape[-1]} but the others are {shape[0]}x{shape[1]};"
            " set image_size to resize them all"
        )
    return image


def _decode_chunk(
    chunk: list[tuple[str, bytes | Path]], size: int | None, shape: tuple[int, int] | None
) -> Tensor:
    blobs = [src if isinstance(src, bytes) else _read(src) for _, src in chunk]
    images: list[Tensor] | None = None
    if all(b.startswith(JPEG_MAGIC) for b in blobs):
        try:
            images = decode_jpeg([_as_tensor(b) for b in blobs], mode=ImageReadMode.RGB)
        except RuntimeError:
            images = None
    if images is None:
        images = [decode_bytes(b, name) for b, (name, _) in zip(blobs, chunk, strict=True)]
    return torch.stack([fit(img, size, shape, name) for img, (name, _) in zip(images, chunk, strict=True)])


def default_workers() -> int:
    """The number of CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_many(
    items: Sequence[tuple[str, bytes | Path]],
    *,
    size: int | None,
    shape: tuple[int, int] | None,
    workers: int | None = None,
) -> Tensor:
    """Decode ``(name, bytes-or-path)`` items, in order, into one uint8 N x 3 x H x W tensor.

    With ``size`` every image is resized to ``size`` x ``size``; otherwise every image must be ``shape``.
    Chunks of ``CHUNK`` images are read and decoded on a thread pool of ``workers`` (default: all cores).
    """
    if not items:
        h, w = (size, size) if size is not None else shape or (0, 0)
        return torch.empty(0, 3, h, w, dtype=torch.uint8)
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return torch.cat(list(pool.map(partial(_decode_chunk, size=size, shape=shape), chunks)))
