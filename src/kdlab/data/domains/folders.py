"""Reading a DG image-folder dataset: ``ROOT/<dataset folder>/<domain folder>/<class>/<image>``.

``ROOT`` is DomainBed's data directory (holding ``PACS/``, ``VLCS/``, ``office_home/``,
``terra_incognita/``, ``domain_net/``) or the dataset folder itself. Classes are the sorted union of
the class folders over all domains, so a domain missing a class (a TerraIncognita location without
one animal) keeps every other label aligned. Images stay files (decoded lazily by DataLoader workers)
unless ``image_size <= 64``, when they are decoded and resized up front.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch

from kdlab.data.decode import decode_many, is_image
from kdlab.data.domains.catalog import DomainSet
from kdlab.data.errors import DatasetNotFoundError
from kdlab.data.raw import Split

SMALL_MAX = 64


def dataset_dir(root: Path, spec: DomainSet) -> Path:
    """``ROOT/<folder>`` when it exists, else ``ROOT`` itself when it holds the domain folders."""
    nested = root / spec.folder
    if nested.is_dir():
        return nested
    if any((root / name).is_dir() for name in spec.domain_folders):
        return root
    return nested


def _layout(spec: DomainSet, base: Path) -> str:
    return f"{base}/{{{','.join(spec.domain_folders)}}}/<class>/<image>"


def near_match(parent: Path, name: str) -> str:
    """`` (found NAME2/: folder names are case-sensitive)`` when ``parent`` holds a folder whose name
    differs from ``name`` only in case (or is close to it), else ''."""
    if not parent.is_dir():
        return ""
    folders = [d.name for d in parent.iterdir() if d.is_dir()]
    same_case = [f for f in folders if f.lower() == name.lower()]
    if same_case:
        return f" (found {same_case[0]}/: folder names are case-sensitive; rename it to {name}/)"
    close = difflib.get_close_matches(name, folders, n=1)
    return f" (did you mean {close[0]}/?)" if close else ""


def _missing(spec: DomainSet, base: Path, what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{spec.title}: {what}; expected the layout {_layout(spec, base)}, as produced by {spec.source}"
    )


def read_domain_folders(root: str | Path, spec: DomainSet, image_size: int | None
                        ) -> tuple[list[Split], list[str]]:
    """One :class:`Split` per domain (in the dataset's domain order) and the class names."""
    base = dataset_dir(Path(root).expanduser(), spec)
    if not base.is_dir():
        raise _missing(spec, base, f"folder {base} not found{near_match(base.parent, base.name)}")
    listing: list[dict[str, list[str]]] = []
    for name in spec.domain_folders:
        folder = base / name
        if not folder.is_dir():
            raise _missing(spec, base, f"domain folder {name!r} not found in {base}{near_match(base, name)}")
        classes = {}
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            files = sorted(f.name for f in os.scandir(class_dir) if f.is_file() and is_image(f.name))
            if files:
                classes[class_dir.name] = files
        if not classes:
            raise _missing(spec, base, f"domain folder {folder} holds no <class>/<image> files")
        listing.append(classes)
    class_names = sorted(set().union(*listing))
    index = {c: i for i, c in enumerate(class_names)}
    decoded = image_size is not None and image_size <= SMALL_MAX
    parts = []
    for name, classes in zip(spec.domain_folders, listing, strict=True):
        paths = [base / name / c / f for c, files in classes.items() for f in files]
        targets = torch.tensor([index[c] for c, files in classes.items() for _ in files], dtype=torch.int64)
        if decoded:
            images = decode_many([(str(p), p) for p in paths], size=image_size, shape=None)
            parts.append(Split(targets, images=images))
        else:
            parts.append(Split(targets, files=tuple(str(p) for p in paths)))
    return parts, class_names
