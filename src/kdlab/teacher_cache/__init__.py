"""Replayable teacher-output cache: the teacher's outputs stored with the augmentation that produced them.

After FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022):
a cache keyed only by sample index is wrong as soon as augmentation is random, so each entry pairs the
augmentation draw of a (sample, epoch) with the teacher's outputs on exactly that view, and training
replays the draw. See ``docs/teacher-cache.md``.
"""

from kdlab.teacher_cache.fill import fill_teacher_cache
from kdlab.teacher_cache.layout import CacheError, CacheLayout, cache_bytes
from kdlab.teacher_cache.replay import EpochSlab, TeacherCacheReplay, topk_to_logits
from kdlab.teacher_cache.signature import run_signature

__all__ = [
    "CacheError",
    "CacheLayout",
    "EpochSlab",
    "TeacherCacheReplay",
    "cache_bytes",
    "fill_teacher_cache",
    "run_signature",
    "topk_to_logits",
]
