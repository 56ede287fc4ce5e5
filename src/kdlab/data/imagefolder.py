"""ImageFolder trees, as folders or inside a ``.tar`` / ``.tar.gz`` archive.

Layout: ``ROOT/train/<class>/<image>`` and ``ROOT/test/<class>/<image>`` (``val`` is used as the test
split when there is no ``test``); class ids follow the sorted class folder names of ``train``. ``ROOT``
may hold the tree directly or inside one top folder; an archive may too (``cifar10-jpeg.tar.gz`` holds
``cifar10-jpeg/{train,test}/...``). Images sit directly in their class folder.

Small images (at most 64 px on a side in a probe of 16 spread-out files, or any size when
``image_size <= 64``) are decoded once, in parallel, into uint8 tensors and cached on disk (see
:mod:`kdlab.data.cache`); without ``image_size`` they must all have the same size. Larger images stay
files, decoded lazily by DataLoader workers; an archive of them is extracted once into the cache.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

import torch

from kdlab.data.cache import cache_dir, cache_key, load_entry, save_entry
from kdlab.data.decode import decode_many, image_size_of, is_image
from kdlab.data.errors import DatasetFormatError, DatasetNotFoundError
from kdlab.data.raw import RawDataset, Split

SPLITS = ("train", "test", "val")
SMALL_MAX = 64
PROBE = 16
CACHE_VERSION = 1
LAYOUT = "ROOT/train/<class>/<image> and ROOT/test/<class>/<image> (or val/)"


@dataclass(frozen=True)
class Entry:
    """One image of the tree: its split, class folder and file name."""

    split: str
    cls: str
    name: str


def _not_found(root: Path, why: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"expected an ImageFolder tree {LAYOUT} at {root}, or a .tar/.tar.gz archive of it ({why}); "
        "arrange your images that way or point root at such an archive"
    )


def _decide_decoded(image_size: int | None, sizes: list[tuple[int, int]]) -> bool:
    if image_size is not None:
        return image_size <= SMALL_MAX
    return max(max(size) for size in sizes) <= SMALL_MAX


def _test_split(entries: Iterable[Entry], root: Path) -> str:
    present = {e.split for e in entries}
    if "train" not in present:
        raise _not_found(root, "no train/<class>/ images")
    for split in ("test", "val"):
        if split in present:
            return split
    raise _not_found(root, "no test/<class>/ or val/<class>/ images")


Part = tuple[list[int], list[int]]


def _assemble(entries: list[Entry], root: Path) -> tuple[list[str], Part, Part]:
    """Classes, then (positions, labels) of the train and test entries in (class, name) order."""
    test_name = _test_split(entries, root)
    classes = sorted({e.cls for e in entries if e.split == "train"})
    index = {c: i for i, c in enumerate(classes)}
    parts: list[Part] = []
    for split in ("train", test_name):
        positions = sorted(
            (i for i, e in enumerate(entries) if e.split == split),
            key=lambda i: (entries[i].cls, entries[i].name),
        )
        unknown = sorted({entries[i].cls for i in positions} - index.keys())
        if unknown:
            raise DatasetFormatError(
                f"{root}: {split}/ has class folders missing from train/: {', '.join(unknown)}"
            )
        parts.append((positions, [index[entries[i].cls] for i in positions]))
    return classes, parts[0], parts[1]


def _decoded_dataset(entries: list[Entry], images: torch.Tensor, root: Path) -> RawDataset:
    classes, *parts = _assemble(entries, root)
    train, test = (
        Split(torch.tensor(labels, dtype=torch.int64), images=images[pos]) for pos, labels in parts
    )
    return RawDataset(train, test, classes)


def _lazy_dataset(entries: list[Entry], base: Path) -> RawDataset:
    classes, *parts = _assemble(entries, base)
    train, test = (
        Split(
            torch.tensor(labels, dtype=torch.int64),
            files=tuple(str(base / entries[i].split / entries[i].cls / entries[i].name) for i in pos),
        )
        for pos, labels in parts
    )
    return RawDataset(train, test, classes)


def _from_cache(cache: dict) -> RawDataset:
    return RawDataset(
        Split(cache["train_targets"], images=cache["train_images"]),
        Split(cache["test_targets"], images=cache["test_images"]),
        list(cache["classes"]),
    )


def _to_cache(data: RawDataset) -> dict:
    return {
        "classes": data.classes,
        "train_images": data.train.images,
        "train_targets": data.train.targets,
        "test_images": data.test.images,
        "test_targets": data.test.targets,
    }


def _probe_shape(sizes: list[tuple[int, int]], image_size: int | None) -> tuple[int, int] | None:
    return None if image_size is not None else sizes[0]


def _tree_base(root: Path) -> Path | None:
    if (root / "train").is_dir():
        return root
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir():
        return subdirs[0]
    return None


def _list_tree(base: Path) -> list[Entry]:
    entries = []
    for split in SPLITS:
        split_dir = base / split
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            names = sorted(f.name for f in os.scandir(class_dir) if f.is_file() and is_image(f.name))
            entries.extend(Entry(split, class_dir.name, n) for n in names)
    return entries


def _read_folder(root: Path, image_size: int | None) -> RawDataset:
    base = _tree_base(root)
    if base is None:
        raise _not_found(root, "no train/ folder")
    entries = _list_tree(base)
    _test_split(entries, root)
    paths = [base / e.split / e.cls / e.name for e in entries]
    step = max(1, len(paths) // PROBE)
    sizes = [image_size_of(p, str(p)) for p in paths[::step][:PROBE]]
    if not _decide_decoded(image_size, sizes):
        return _lazy_dataset(entries, base)
    stats = [(str(p.relative_to(base)), st.st_size, st.st_mtime_ns) for p in paths for st in [p.stat()]]
    path = cache_dir() / f"imagefolder-{cache_key('folder', str(base), image_size, CACHE_VERSION, stats)}.pt"
    cached = load_entry(path)
    if cached is not None:
        return _from_cache(cached)
    images = decode_many([(str(p), p) for p in paths], size=image_size, shape=_probe_shape(sizes, image_size))
    data = _decoded_dataset(entries, images, root)
    save_entry(_to_cache(data), path)
    return data


def _tree_parts(member: tarfile.TarInfo) -> list[str] | None:
    """The path components of an archive member that is an image of the tree, else None."""
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if not member.isfile() or len(parts) < 3 or ".." in parts:
        return None
    if parts[-3] not in SPLITS or not is_image(parts[-1]) or parts[-1].startswith("._"):
        return None
    return parts


def _archive_members(archive: Path) -> Iterator[tuple[Entry, bytes]]:
    """(entry, bytes) for each image of the tree, in archive order; checks there is one top folder."""
    prefix: list[str] | None = None
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                parts = _tree_parts(member)
                if parts is None:
                    continue
                if prefix is None:
                    prefix = parts[:-3]
                elif parts[:-3] != prefix:
                    raise DatasetFormatError(
                        f"{archive}: images under both {'/'.join(prefix) or '.'}/ and "
                        f"{'/'.join(parts[:-3]) or '.'}/; expected a single top folder"
                    )
                handle = tar.extractfile(member)
                yield Entry(parts[-3], parts[-2], parts[-1]), handle.read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetFormatError(f"{archive}: cannot read archive ({err})") from None


def _extract(members: Iterable[tuple[Entry, bytes]], target: Path) -> list[Entry]:
    """Write the images under ``target`` (atomically: a temporary folder, then a rename).

    When another process (e.g. another rank) renamed its copy into place first, that copy is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    entries = []
    try:
        for entry, data in members:
            folder = tmp / entry.split / entry.cls
            folder.mkdir(parents=True, exist_ok=True)
            (folder / entry.name).write_bytes(data)
            entries.append(entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise
    return entries


def _member_name(archive: Path, entry: Entry) -> str:
    return f"{archive}:{entry.split}/{entry.cls}/{entry.name}"


def _read_archive(archive: Path, image_size: int | None) -> RawDataset:
    stat = archive.stat()
    key = cache_key("archive", str(archive), stat.st_size, stat.st_mtime_ns, image_size, CACHE_VERSION)
    tensor_path = cache_dir() / f"imagefolder-{key}.pt"
    files_path = cache_dir() / f"imagefolder-{key}-files"
    cached = load_entry(tensor_path)
    if cached is not None:
        return _from_cache(cached)
    if files_path.is_dir():
        return _lazy_dataset(_list_tree(files_path), files_path)
    members = _archive_members(archive)
    head = list(islice(members, PROBE))
    if not head:
        raise _not_found(archive, "the archive holds no train/<class>/ images")
    sizes = [image_size_of(data, _member_name(archive, entry)) for entry, data in head]
    stream = chain(head, members)
    if not _decide_decoded(image_size, sizes):
        return _lazy_dataset(_extract(stream, files_path), files_path)
    members = list(stream)
    entries = [entry for entry, _ in members]
    items = [(_member_name(archive, entry), data) for entry, data in members]
    del members
    images = decode_many(items, size=image_size, shape=_probe_shape(sizes, image_size))
    data = _decoded_dataset(entries, images, archive)
    save_entry(_to_cache(data), tensor_path)
    return data


def load_imagefolder(root: str | Path, *, image_size: int | None = None) -> RawDataset:
    """An ImageFolder tree from a folder or a ``.tar``/``.tar.gz`` archive (see the module docstring)."""
    path = Path(root).expanduser().resolve()
    if path.is_dir():
        return _read_folder(path, image_size)
    if path.is_file() and tarfile.is_tarfile(path):
        return _read_archive(path, image_size)
    raise _not_found(path, "nothing usable there")
