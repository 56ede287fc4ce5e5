"""MNIST and Fashion-MNIST in the idx layout (the files torchvision's ``MNIST`` class reads).

Four files, uncompressed or gzipped (``NAME`` or ``NAME.gz``): ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``. They are looked up,
in this order, in ``ROOT/<Folder>/raw`` (``MNIST`` or ``FashionMNIST``, as torchvision stores them),
``ROOT/raw`` and ``ROOT``. Images are 28x28, one channel.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdlab.data.errors import DatasetFormatError, DatasetNotFoundError
from kdlab.data.raw import RawDataset, Split, check_labels, resize_dataset

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class IdxLayout:
    """One idx-format dataset: its torchvision folder name, class names and where to get it."""

    title: str
    folder: str
    classes: tuple[str, ...]
    source: str


MNIST = IdxLayout(
    "MNIST",
    "MNIST",
    ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four")
    + ("5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"),
    "https://yann.lecun.com/exdb/mnist/ (or any mirror)",
)
FASHION_MNIST = IdxLayout(
    "Fashion-MNIST",
    "FashionMNIST",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")
    + ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "https://github.com/zalandoresearch/fashion-mnist",
)


def _locate(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_files(root: Path, layout: IdxLayout) -> dict[str, Path]:
    for folder in (root / layout.folder / "raw", root / "raw", root):
        found = {key: _locate(folder, name) for key, name in FILES.items()}
        if all(found.values()):
            return found
    raise DatasetNotFoundError(
        f"expected {layout.title} idx files {{{','.join(FILES.values())}}}[.gz] in "
        f"{root / layout.folder / 'raw'} (or {root / 'raw'} or {root}); "
        f"download them from {layout.source} and put them there"
    )


def read_idx(path: Path) -> Tensor:
    """An idx file (optionally gzipped) of unsigned bytes as a uint8 tensor of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetFormatError(f"{path}: cannot read ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetFormatError(f"{path}: not an idx file (bad magic number)")
    if data[2] != 0x08:
        raise DatasetFormatError(f"{path}: idx element type 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">i4")) if ndim else ()
    if len(shape) != ndim or len(data) != header + int(np.prod(shape)):
        raise DatasetFormatError(f"{path}: size does not match the idx header shape {shape}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy())


def _read_part(images_path: Path, labels_path: Path, num_classes: int) -> Split:
    images = read_idx(images_path)
    if images.ndim != 3:
        raise DatasetFormatError(f"{images_path}: expected N x H x W images, got shape {tuple(images.shape)}")
    labels = read_idx(labels_path)
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetFormatError(f"{labels_path}: expected {len(images)} labels, got {tuple(labels.shape)}")
    return Split(check_labels(labels, num_classes, str(labels_path)), images=images.unsqueeze(1))


def read_idx_dataset(root: str | Path, layout: IdxLayout, image_size: int | None = None) -> RawDataset:
    """Read an idx-layout dataset found under ``root`` (see the module docstring for the search)."""
    files = _find_files(Path(root).expanduser(), layout)
    classes = list(layout.classes)
    train = _read_part(files["train_images"], files["train_labels"], len(classes))
    test = _read_part(files["test_images"], files["test_labels"], len(classes))
    return resize_dataset(RawDataset(train, test, classes), image_size)


def load_mnist(root: str | Path, *, image_size: int | None = None) -> RawDataset:
    """MNIST (60k train, 10k test handwritten digits, 28x28 grey)."""
    return read_idx_dataset(root, MNIST, image_size)


def load_fashion_mnist(root: str | Path, *, image_size: int | None = None) -> RawDataset:
    """Fashion-MNIST (60k train, 10k test clothing images, 28x28 grey)."""
    return read_idx_dataset(root, FASHION_MNIST, image_size)
