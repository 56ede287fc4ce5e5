"""``kdlab cache-teacher``: run the teacher once over E epochs of pre-drawn augmentations.

Epoch ``e``'s draws for every training sample come from a generator seeded by
``(teacher_cache.seed, e)``; the teacher sees each sample augmented with its draw and its outputs are
written next to the draw. Work is split into units of one epoch x one chunk of samples; a finished unit
leaves a marker, so a killed run resumes where it stopped, and ``num_shards`` processes (one per GPU,
say) can fill one cache together, shard ``s`` taking the units ``u`` with ``u % num_shards == s``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdlab.assembly import build_run_data, build_run_distiller, process_runtime, resolve_device
from kdlab.config.schema import RunConfig
from kdlab.core.errors import ConfigError
from kdlab.data.batch import ReplayableSource
from kdlab.data.order import epoch_generator
from kdlab.engine.precision import resolve_precision
from kdlab.engine.teacher_fast import teacher_plan
from kdlab.ensemble import member_logits
from kdlab.methods import Distiller
from kdlab.teacher_cache.layout import FORMAT_VERSION, CacheError, CacheLayout, cache_bytes, num_chunks
from kdlab.teacher_cache.signature import run_signature

log = logging.getLogger("kdlab")
CHUNK_BATCHES = 16
MEMORY_FORMAT = torch.channels_last


def cache_meta(config: RunConfig, signature: dict[str, Any]) -> dict[str, Any]:
    """``meta.json`` of the cache ``config`` describes (without its creation time)."""
    cache = config.teacher_cache
    return {
        "format": FORMAT_VERSION,
        **signature,
        "features": signature.get("features", []),
        "epochs": cache.epochs,
        "seed": cache.seed,
        "chunk_size": cache.batch_size * CHUNK_BATCHES,
        "teacher": config.teacher.model_dump(mode="json") if config.teacher is not None else
        [t.model_dump(mode="json") for t in config.teachers],
    }


def _differing_key(existing: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first field the two caches must share but do not (the teacher's config is only a record:
    its weights are compared by ``teacher_sha256``)."""
    return next((key for key in wanted if key != "teacher" and existing.get(key) != wanted[key]), None)


def _write_outputs(arrays: dict[str, np.memmap], epoch: int, rows: slice, logits: Tensor,
                   features: list[Tensor], topk: int | None) -> None:
    logits = logits.float()
    if not torch.isfinite(logits.half()).all():
        raise CacheError("teacher_cache: the teacher's logits overflow fp16 (|z| > 65504); cannot cache them")
    if topk is None:
        arrays["logits"][epoch, rows] = logits.half().cpu().numpy()
    else:
        values, indices = logits.topk(topk, dim=1)
        rest = logits.scatter(1, indices, float("-inf")).logsumexp(dim=1)
        arrays["topk_values"][epoch, rows] = values.half().cpu().numpy()
        arrays["topk_indices"][epoch, rows] = indices.cpu().numpy().astype(arrays["topk_indices"].dtype)
        arrays["rest_logsumexp"][epoch, rows] = rest.cpu().numpy()
    for i, feature in enumerate(features):
        arrays[f"feature{i}"][epoch, rows] = feature.float().half().cpu().numpy()


@torch.no_grad()
def _fill_unit(distiller: Distiller, source: ReplayableSource, arrays: dict[str, np.memmap],
               meta: dict[str, Any], epoch: int, chunk: int, draws: Tensor, autocast: Any) -> None:
    start = chunk * meta["chunk_size"]
    stop = min(start + meta["chunk_size"], meta["num_samples"])
    ids = torch.arange(start, stop)
    arrays["augment"][epoch, start:stop] = draws[start:stop].numpy()
    taps = distiller.teacher_feature_taps()[0] if meta["features"] else None
    row = start
    for inputs in source.views(ids, draws[start:stop], meta["chunk_size"] // CHUNK_BATCHES):
        inputs = distiller.teacher_inputs(inputs).contiguous(memory_format=MEMORY_FORMAT)
        with autocast:
            if meta.get("members"):
                logits = member_logits(distiller.teacher, inputs).transpose(0, 1)
            else:
                logits = distiller.teacher(inputs)
        features = taps.features if taps is not None else []
        if taps is not None:
            taps.clear()
        _write_outputs(arrays, epoch, slice(row, row + len(inputs)), logits, features, meta["topk"])
        row += len(inputs)


def fill_teacher_cache(config: RunConfig, *, shard: int = 0, num_shards: int = 1) -> Path:
    """Fill (or finish) the cache of ``config.teacher_cache``; returns its directory."""
    if config.teacher_cache is None:
        raise ConfigError("teacher_cache: the config has no teacher_cache section (path, epochs, ...)")
    if not 0 <= shard < num_shards:
        raise ConfigError(f"--shard: {shard} is outside 0..{num_shards - 1}")
    device = resolve_device(config.train.device)
    data = build_run_data(config, process_runtime(device, config.train.seed))
    distiller = build_run_distiller(config, data).place(device)
    distiller.teacher.to(memory_format=MEMORY_FORMAT)
    try:
        meta = cache_meta(config, run_signature(config, data, distiller))
        layout = CacheLayout(Path(config.teacher_cache.path))
        if not layout.meta_path.is_file():
            layout.create({**meta, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        existing = layout.read_meta()
        if (key := _differing_key(existing, meta)) is not None:
            raise CacheError(f"teacher_cache.path: {layout.root} already holds a cache made with a different "
                             f"{key.replace('_', ' ')}; delete it or choose another path")
    except CacheError as exc:
        raise ConfigError(str(exc)) from None
    arrays = layout.open_arrays(meta, mode="r+")
    precision = resolve_precision(config.train.precision, device)
    plan = teacher_plan(config.teacher_fast(), config.train, precision)
    for note in distiller.frozen.speed_up(plan, data.input_shape):
        log.info("kdlab cache-teacher: teacher fast path: %s", note)
    autocast = precision.autocast()
    chunks = num_chunks(meta)
    log.info("kdlab cache-teacher: %s, %d epochs x %d samples, %.2f GB", layout.root, meta["epochs"],
             meta["num_samples"], cache_bytes(meta) / 1e9)
    started = time.perf_counter()
    for epoch in range(meta["epochs"]):
        units = [c for c in range(chunks) if (epoch * chunks + c) % num_shards == shard
                 and not layout.is_done(epoch, c)]
        if not units:
            continue
        draws = data.train.draw_by_sample(epoch_generator(meta["seed"], epoch))
        for chunk in units:
            _fill_unit(distiller, data.train, arrays, meta, epoch, chunk, draws, autocast)
            for array in arrays.values():
                array.flush()
            layout.mark_done(epoch, chunk)
        log.info("kdlab cache-teacher: epoch %d/%d done (%.1f s)", epoch + 1, meta["epochs"],
                 time.perf_counter() - started)
    missing = layout.missing_parts(meta)
    if missing:
        log.info("kdlab cache-teacher: this shard is done; %d parts are left to other shards", missing)
    return layout.root
