"""What a cache must agree on with the run that fills or reads it."""

from __future__ import annotations

from typing import Any

from kdlab.config.schema import RunConfig
from kdlab.data import DataBundle
from kdlab.data.batch import ReplayableSource
from kdlab.methods import Distiller
from kdlab.methods.ensemble_kd import teacher_count
from kdlab.teacher_cache.fingerprint import files_sha256, module_sha256, tensor_sha256
from kdlab.teacher_cache.layout import CacheError


def data_sha256(source: ReplayableSource) -> str:
    """Fingerprint of a training source's samples (decoded images, or the file list of a lazy split)."""
    samples = source.samples()
    return files_sha256(samples) if isinstance(samples, list) else tensor_sha256(samples)


def run_signature(config: RunConfig, data: DataBundle, distiller: Distiller) -> dict[str, Any]:
    """The fields of ``meta.json`` that must equal this run's for the cache to be valid for it.

    Raises :class:`CacheError` when the method or the data source cannot use a cache at all.
    """
    cache = config.teacher_cache
    method = config.method.name
    if config.data.mix is not None:
        raise CacheError("data.mix: a teacher cache cannot replay mixup/cutmix: it holds the teacher's "
                         "outputs on single images, and its output on a mixed image is not the mix of those; "
                         "remove data.mix or the teacher_cache section")
    if distiller.teacher is None or distiller.teacher_cache == "none":
        raise CacheError(f"teacher_cache: method {method!r} runs its teacher on inputs a cache cannot "
                         "replay (adversarial or perturbed inputs, or its own features); remove the "
                         "teacher_cache section")
    if distiller.teacher_cache == "features" and not cache.features:
        raise CacheError(f"teacher_cache.features: method {method!r} reads teacher features; set "
                         "teacher_cache.features: true and fill the cache with kdlab cache-teacher")
    if distiller.teacher_cache != "features" and cache.features:
        raise CacheError(f"teacher_cache.features: method {method!r} taps no teacher features; "
                         "set it to false")
    if not isinstance(data.train, ReplayableSource):
        raise CacheError(f"teacher_cache: the training data of {config.data.name!r} "
                         f"({type(data.train).__name__}) cannot replay cached augmentations")
    members = teacher_count(distiller.teacher) if distiller.teacher_cache == "members" else 0
    if members and cache.outputs == "topk":
        raise CacheError("teacher_cache.outputs: an ensemble's member logits are cached in full; "
                         "use outputs: logits")
    if cache.outputs == "topk" and cache.topk >= data.num_classes:
        raise CacheError(f"teacher_cache.topk: {cache.topk} is not below the {data.num_classes} classes; "
                         "use outputs: logits")
    if distiller.frozen.sped_up:
        raise RuntimeError("the teacher cache fingerprint is taken from the teacher's weights as built, "
                           "before its fast path (folding, casting) changes them")
    teacher = config.teacher or next(iter(config.teachers), None)
    signature: dict[str, Any] = {
        "num_samples": data.train.num_samples,
        "num_classes": data.num_classes,
        "data_sha256": data_sha256(data.train),
        "augment": data.train.augment_spec(),
        "teacher_sha256": module_sha256(distiller.teacher),
        "outputs": cache.outputs,
        "topk": cache.topk if cache.outputs == "topk" else None,
        "normalization": {"data": [list(data.mean), list(data.std)],
                          "teacher": [teacher.mean, teacher.std] if teacher is not None else None},
    }
    if distiller.renormalizes:
        signature["teacher_input_map"] = [distiller.teacher_input_scale.flatten().tolist(),
                                          distiller.teacher_input_shift.flatten().tolist()]
    if members:
        signature["members"] = members
    if cache.features:
        taps, shapes = distiller.teacher_feature_taps()
        signature["features"] = [{"tap": f"{tap.path}:{tap.kind}", "shape": list(shape)} for tap, shape
                                 in zip(taps.taps, shapes, strict=True)]
    return signature
