"""Teacher outputs shared within a study: which students replay a cache, and the job that fills it.

A student replays a shared cache when its method declares that a cache of the teacher's logits can
stand in for its teacher (``Distiller.teacher_cache == "logits"``: ``kd``, ``dkd``, ``ipwd``, ...) and its
run can replay one: an epoch budget (``train.epochs``; a step budget's epoch count is known only once
the data is built), no ``data.mix`` (a mixed image's teacher output is not the mix of the cached ones),
no ``stages`` plan and no ``teacher_cache`` section of its own. Methods whose replay depends on their
parameters (``composed``, the ensemble methods) and feature methods (whose caches hold the tapped
layers, large and per method) keep the live teacher, as do methods that run the teacher on other inputs.

The fill is ``kdlab cache-teacher`` on a config made of what the cache depends on: the student's data
(without ``data.noise``: the teacher never sees labels), student and teacher models and ``train``
settings, with ``teacher_cache.epochs`` the student's epochs (no cycling). Students that agree on that
config share one fill (its id carries a digest of the config), whatever their method, seed or
hyper-parameter draw; the cache's own checks (teacher weights, samples, augmentation, normalization)
still run in every student, so a cache that does not fit a student stops it with a line naming why.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from kdlab.protocols.records import config_digest

CACHE_DIR = "teacher_cache"
FILL_METHOD = {"name": "kd"}


def replays(method: type, tree: dict[str, Any]) -> bool:
    """Whether a student of ``method`` (its registry class) with run config ``tree`` can replay a shared
    cache of its teacher's logits (see the module docstring)."""
    train = tree.get("train") or {}
    return (getattr(method, "teacher_cache", "none") == "logits" and train.get("epochs") is not None
            and not (tree.get("data") or {}).get("mix") and not tree.get("stages")
            and not tree.get("teacher_cache"))


def fill_config(student: dict[str, Any], teacher_id: str, teacher_seed: int,
                study_dir: Path) -> tuple[str, dict[str, Any]]:
    """The id and run config of the fill that serves the student with run config ``student`` (trained
    from the teacher job ``teacher_id``): id ``cache_<teacher>_<digest of the config>``, its cache in
    ``STUDY/teacher_cache/<id>``."""
    data = {k: copy.deepcopy(v) for k, v in student["data"].items() if k != "noise"}
    train = {**copy.deepcopy(student["train"]), "seed": teacher_seed, "progress": False}
    tree: dict[str, Any] = {
        "data": data, "student": copy.deepcopy(student["student"]),
        "teacher": copy.deepcopy(student["teacher"]), "method": dict(FILL_METHOD), "train": train,
        "teacher_cache": {"epochs": int(train["epochs"]), "outputs": "logits"}}
    digest = config_digest(tree)[:10]
    job_id = f"cache_{teacher_id.removeprefix('teacher_')}_{digest}"
    tree["name"] = job_id
    tree["out_dir"] = str(study_dir / "runs")
    tree["teacher_cache"]["path"] = str(cache_dir(study_dir, job_id))
    return job_id, tree


def cache_dir(study_dir: Path, fill_id: str) -> Path:
    """Where the fill ``fill_id`` writes its cache."""
    return study_dir / CACHE_DIR / fill_id


def attach(student: dict[str, Any], fill: dict[str, Any]) -> None:
    """Make the student with run config ``student`` replay the cache of the fill with config ``fill``."""
    cache = fill["teacher_cache"]
    student["teacher_cache"] = {"path": cache["path"], "epochs": cache["epochs"], "outputs": "logits"}
