"""On-disk layout of a replayable teacher cache, and the size it takes.

A cache is a directory::

    meta.json               what produced it (teacher and data fingerprints, augmentation, outputs)
    augment.npy             int32 [E, N, P]   per epoch and sample: the augmentation draw
    logits.npy              fp16  [E, N, C]   outputs: logits ([E, N, M, C] for an ensemble of M teachers)
    topk_values.npy         fp16  [E, N, k]   outputs: topk (the k largest logits ...
    topk_indices.npy        int16/int32 [E, N, k]              ... their classes ...
    rest_logsumexp.npy      fp32  [E, N]                       ... and logsumexp of the other C - k)
    feature<i>.npy          fp16  [E, N, *shape_i]  tapped teacher features, when cached
    parts/e<epoch>-c<chunk> one empty marker per finished (epoch, chunk of samples) unit

``E`` epochs, ``N`` training samples, ``P`` numbers per augmentation draw (3 for crop/flip: top, left,
flip; 1 for a per-sample transform seed; 0 without augmentation), ``C`` classes. The arrays are
``.npy`` files opened as memory maps, so a cache larger than memory works and several processes can
fill disjoint units of one cache. Bytes on disk (the formula in the docs)::

    E * N * (4 P + 2 C)                        logits (2 M C for an ensemble of M teachers)
    E * N * (4 P + 2 k + b k + 4)              topk, b = 2 when C <= 32767 else 4
    + E * N * 2 * sum_i |feature_i|            features
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.core.errors import ConfigError

FORMAT_VERSION = 1
META = "meta.json"


class CacheError(ConfigError):
    """A cache that cannot be used as asked: missing, incomplete, or made by something else."""


def index_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.int16) if num_classes <= np.iinfo(np.int16).max else np.dtype(np.int32)


def array_specs(meta: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of every array of a cache described by ``meta``."""
    e, n, c = meta["epochs"], meta["num_samples"], meta["num_classes"]
    specs = {"augment": ((e, n, meta["augment"]["width"]), np.dtype(np.int32))}
    if meta["outputs"] == "logits":
        members = meta.get("members", 0)
        specs["logits"] = ((e, n, members, c) if members else (e, n, c), np.dtype(np.float16))
    else:
        k = meta["topk"]
        specs["topk_values"] = ((e, n, k), np.dtype(np.float16))
        specs["topk_indices"] = ((e, n, k), index_dtype(c))
        specs["rest_logsumexp"] = ((e, n), np.dtype(np.float32))
    for i, feature in enumerate(meta["features"]):
        specs[f"feature{i}"] = ((e, n, *feature["shape"]), np.dtype(np.float16))
    return specs


def cache_bytes(meta: dict[str, Any]) -> int:
    """Bytes the arrays of a cache take on disk."""
    return sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in array_specs(meta).values())


def damaged(path: Path, reason: str) -> CacheError:
    """The error for a cache file that cannot be read as its ``meta.json`` describes it."""
    return CacheError(f"teacher_cache.path: {path} is damaged ({reason}); delete the cache and fill it "
                      "again with: kdlab cache-teacher CONFIG")


@dataclass(frozen=True)
class CacheLayout:
    """Paths and unit bookkeeping of the cache directory ``root``."""

    root: Path

    @property
    def meta_path(self) -> Path:
        return self.root / META

    def read_meta(self) -> dict[str, Any]:
        if not self.meta_path.is_file():
            raise CacheError(f"teacher_cache.path: {self.root} holds no teacher cache ({META} missing); "
                             "fill it with: kdlab cache-teacher CONFIG")
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise damaged(self.meta_path, type(exc).__name__) from None
        if not isinstance(meta, dict):
            raise damaged(self.meta_path, "not a JSON object")
        return meta

    def open_arrays(self, meta: dict[str, Any], mode: str = "r") -> dict[str, np.memmap]:
        """Every array of the cache, memory-mapped; a missing, truncated or reshaped file is refused."""
        arrays = {}
        for name, (shape, dtype) in array_specs(meta).items():
            path = self.root / f"{name}.npy"
            try:
                arrays[name] = np.load(path, mmap_mode=mode)
            except (OSError, ValueError) as exc:
                raise damaged(path, str(exc).splitlines()[0]) from None
            if arrays[name].shape != tuple(shape) or arrays[name].dtype != dtype:
                raise damaged(path, f"it holds {arrays[name].shape} {arrays[name].dtype}, but {META} "
                                    f"describes {tuple(shape)} {dtype}")
        return arrays

    def create(self, meta: dict[str, Any]) -> None:
        """Write ``meta`` and empty (sparse) arrays into a fresh directory, then move it into place.

        When another process got there first the directory is left as it is; the caller then checks
        that its ``meta.json`` describes the same cache.
        """
        if self.root.exists() and not self.root.is_dir():
            raise CacheError(f"teacher_cache.path: {self.root} is a file, not a cache directory")
        staging = self.root.with_name(f"{self.root.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "parts").mkdir(parents=True)
        for name, (shape, dtype) in array_specs(meta).items():
            np.lib.format.open_memmap(staging / f"{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()
        (staging / META).write_text(json.dumps(meta, indent=1) + "\n")
        self.root.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(self.root)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not self.meta_path.is_file():
                raise

    def part_path(self, epoch: int, chunk: int) -> Path:
        return self.root / "parts" / f"e{epoch:05d}-c{chunk:06d}"

    def is_done(self, epoch: int, chunk: int) -> bool:
        return self.part_path(epoch, chunk).exists()

    def mark_done(self, epoch: int, chunk: int) -> None:
        self.part_path(epoch, chunk).touch()

    def missing_parts(self, meta: dict[str, Any]) -> int:
        done = {p.name for p in (self.root / "parts").iterdir()}
        return sum(1 for e in range(meta["epochs"]) for c in range(num_chunks(meta))
                   if self.part_path(e, c).name not in done)


def num_chunks(meta: dict[str, Any]) -> int:
    return -(-meta["num_samples"] // meta["chunk_size"])
