"""CIFAR-10 and CIFAR-100 in the official "python version" pickle layout.

CIFAR-10: ``ROOT/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}``; each batch
is a pickled dict with ``data`` (N x 3072 uint8, channel-major 32x32 RGB) and ``labels``.
CIFAR-100: ``ROOT/cifar-100-python/{train, test, meta}`` with ``data`` and ``fine_labels``; the class
names are ``fine_label_names`` in ``meta``. ``ROOT`` may also be the ``cifar-*`` folder itself.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.data.errors import DatasetFormatError, DatasetNotFoundError
from kdlab.data.raw import RawDataset, Split, check_labels, resize_dataset

SOURCE_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarLayout:
    """File names of one CIFAR variant."""

    title: str
    folder: str
    archive: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str


CIFAR10 = CifarLayout(
    "CIFAR-10",
    "cifar-10-batches-py",
    "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
    "labels",
    "label_names",
)
CIFAR100 = CifarLayout(
    "CIFAR-100",
    "cifar-100-python",
    "cifar-100-python.tar.gz",
    ("train",),
    "test",
    "meta",
    "fine_labels",
    "fine_label_names",
)


#: the only globals a CIFAR batch's pickle references: numpy arrays and dtypes (as numpy 1 and 2 name
#: them) and the codec Python 3 uses for bytes at protocol 2; anything else is refused unimported
CIFAR_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that references something a CIFAR batch never holds."""


class CifarUnpickler(pickle.Unpickler):
    """Reads dicts, lists, bytes, strings, numbers and numpy arrays; refuses every other global before
    importing it, so a crafted batch file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_GLOBALS:
            raise RefusedPickle(f"it references {module}.{name}, which a CIFAR batch never holds; "
                                "refusing to load it")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = CifarUnpickler(f, encoding="latin1").load()
    except RefusedPickle as err:
        raise DatasetFormatError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DatasetFormatError(f"{path}: not a CIFAR python pickle ({err})") from None
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(raw).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _find_folder(root: Path, layout: CifarLayout) -> Path:
    files = (*layout.train, layout.test, layout.meta)
    for folder in (root / layout.folder, root):
        if all((folder / name).is_file() for name in files):
            return folder
    raise DatasetNotFoundError(
        f"expected {layout.title} python batches at {root / layout.folder}/{{{','.join(files)}}}; "
        f"download {layout.archive} from {SOURCE_URL} and extract it under {root}"
    )


def _read_part(folder: Path, names: tuple[str, ...], layout: CifarLayout, num_classes: int) -> Split:
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = _unpickle(path)
        if "data" not in batch or layout.label_key not in batch:
            raise DatasetFormatError(f"{path}: missing 'data' or '{layout.label_key}'")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetFormatError(f"{path}: data has shape {data.shape}, expected N x 3072")
        part_labels = torch.as_tensor(np.asarray(batch[layout.label_key], dtype=np.int64))
        if len(part_labels) != len(data):
            raise DatasetFormatError(f"{path}: {len(data)} images but {len(part_labels)} labels")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(check_labels(part_labels, num_classes, str(path)))
    return Split(torch.cat(labels), images=torch.cat(images))


def read_cifar(root: str | Path, layout: CifarLayout, image_size: int | None = None) -> RawDataset:
    """Read one CIFAR variant from ``root`` (the parent of the ``cifar-*`` folder, or that folder)."""
    folder = _find_folder(Path(root).expanduser(), layout)
    meta = _unpickle(folder / layout.meta)
    if layout.names_key not in meta:
        raise DatasetFormatError(f"{folder / layout.meta}: missing '{layout.names_key}'")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key]]
    train = _read_part(folder, layout.train, layout, len(classes))
    test = _read_part(folder, (layout.test,), layout, len(classes))
    return resize_dataset(RawDataset(train, test, classes), image_size)


def load_cifar10(root: str | Path, *, image_size: int | None = None) -> RawDataset:
    """CIFAR-10 (50k train, 10k test, 10 classes) from the python batches under ``root``."""
    return read_cifar(root, CIFAR10, image_size)


def load_cifar100(root: str | Path, *, image_size: int | None = None) -> RawDataset:
    """CIFAR-100 (50k train, 10k test, 100 fine classes) from the python batches under ``root``."""
    return read_cifar(root, CIFAR100, image_size)
