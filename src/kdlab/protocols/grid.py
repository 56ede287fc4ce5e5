"""Expand a study into ordinary runs: conditions x pairs x methods (x hyper-parameter draws) x seeds, plus
the teachers they need.

A teacher is one ``ce`` run of the pair's teacher model, keyed by (teacher model, the data it trains on,
seed); every student run that needs it (methods whose ``needs_teacher`` is set) depends on it, so each
teacher is trained once and shared by all methods (and, with ``teacher.per_seed: false``, all seeds).
With ``teacher.share_outputs`` (the default) the teacher's outputs are shared too (:mod:`.shared_cache`):
one cache-fill job per teacher and set of cache-relevant student settings runs the teacher once over
pre-drawn augmentations into ``STUDY/teacher_cache/<fill id>``, and every student whose method can replay
the cache depends on the fill and reads the cache instead of running the teacher; the others keep the
live teacher. A method with a ``search`` space gets ``search.draws`` student runs per cell (ids
``..._d<k>_s<seed>``), draw ``k``'s values (:func:`.search.draw`) set over the method entry's. Jobs are
listed seed by seed, teachers before their cache fills before their students, which is the order the
pool starts them: an interrupted study has whole seeds done first.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.config.load import ConfigError, read_yaml, set_dotted
from kdlab.protocols import search, shared_cache
from kdlab.protocols.result_line import flatten
from kdlab.protocols.study_schema import ConditionsConfig, MethodEntry, PairConfig, StudyConfig


@dataclass(frozen=True)
class Condition:
    """One data condition: a ``data.noise`` and/or ``data.imbalance`` section (neither: clean)."""

    name: str
    noise: dict[str, Any] | None = None
    imbalance: dict[str, Any] | None = None

    @property
    def noise_type(self) -> str | None:
        return self.noise["type"] if self.noise else None

    @property
    def noise_rate(self) -> float:
        return float(self.noise["rate"]) if self.noise else 0.0

    @property
    def imbalance_profile(self) -> str | None:
        return self.imbalance["profile"] if self.imbalance else None

    @property
    def imbalance_ratio(self) -> float:
        return float(self.imbalance["ratio"]) if self.imbalance else 1.0


CLEAN = Condition("clean")


@dataclass
class Job:
    """One run of the study. ``tree`` is its run config (unvalidated); ``depends`` the job it waits for:
    a student's teacher, or the shared cache fill it replays (``shared_cache``), which waits for the
    teacher; ``teacher_job`` is a student's teacher either way. ``role``: ``teacher``, ``student`` or
    ``cache`` (a fill, :mod:`.shared_cache`)."""

    id: str
    role: str
    condition: Condition
    pair: str
    model: str
    method: str
    method_name: str
    seed: int
    tree: dict[str, Any]
    teacher_model: str | None = None
    depends: str | None = None
    labels_key: str | None = field(default=None, repr=False)
    draw: int | None = None
    searched: dict[str, Any] = field(default_factory=dict)
    teacher_job: str | None = None
    shared_cache: str | None = None


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", text).strip("_")


def pair_slug(name: str) -> str:
    """``teacher->student`` as ``teacher-to-student``, file-name safe."""
    return slug(name.replace("->", "-to-"))


def expand_conditions(config: ConditionsConfig) -> list[Condition]:
    """The conditions of the study, clean first when present, without duplicates."""
    noises = [
        None if rate == 0 else {"type": axis.type, "rate": rate, "seed": config.noise_seed,
                                "flip_map": axis.flip_map, "include_true_class": axis.include_true_class,
                                "val": axis.val}
        for axis in config.noise for rate in axis.rates
    ]
    imbalances = [
        None if ratio == 1 else {"profile": axis.profile, "ratio": ratio, "seed": config.imbalance_seed,
                                 "minority_fraction": axis.minority_fraction, "groups": axis.groups}
        for axis in config.imbalance for ratio in axis.ratios
    ]
    if config.cross:
        combos = [(n, i) for n in (noises or [None]) for i in (imbalances or [None])]
    else:
        combos = [(n, None) for n in noises] + [(None, i) for i in imbalances] or [(None, None)]
    conditions: dict[str, Condition] = {}
    for noise, imbalance in combos:
        condition = _condition(noise, imbalance)
        seen = conditions.setdefault(condition.name, condition)
        if seen != condition:
            raise ConfigError(f"conditions: two axes both give condition {condition.name!r} but differ in "
                              "their other settings (flip_map, include_true_class, val, minority_fraction or "
                              "groups); a condition is named by its type and rate only, so put such axes "
                              "in separate studies")
    return sorted(conditions.values(), key=lambda c: c.name != "clean")


def _condition(noise: dict[str, Any] | None, imbalance: dict[str, Any] | None) -> Condition:
    parts = []
    if noise is not None:
        parts.append(f"noise-{noise['type']}-{noise['rate']:g}")
    if imbalance is not None:
        parts.append(f"imb-{imbalance['profile']}-{imbalance['ratio']:g}")
    return Condition("_".join(parts) or "clean", noise, imbalance)


def base_tree(study: StudyConfig, folder: Path) -> dict[str, Any]:
    """The study's base run config with its ``overrides`` applied."""
    tree = read_yaml(folder / study.base) if isinstance(study.base, str) else copy.deepcopy(study.base)
    for key, value in study.overrides.items():
        set_dotted(tree, key.split("."), value)
    return tree


def _run_tree(base: dict[str, Any], overrides: dict[str, Any], condition: Condition, model: str,
              method: dict[str, Any], seed: int, name: str, runs_dir: Path) -> dict[str, Any]:
    tree = copy.deepcopy(base)
    for key, value in overrides.items():
        set_dotted(tree, key.split("."), value)
    tree.pop("teacher", None)
    tree.pop("teachers", None)
    student = tree.get("student") or {}
    tree["student"] = {**student, "name": model} if student.get("name") == model else {"name": model}
    tree["method"] = method
    data = tree.setdefault("data", {})
    for key, section in (("noise", condition.noise), ("imbalance", condition.imbalance)):
        if section is None:
            data.pop(key, None)
        else:
            data[key] = {k: v for k, v in section.items() if v is not None}
    tree.setdefault("train", {})["seed"] = seed
    tree["train"].setdefault("per_class", "on")
    tree["name"] = name
    tree["out_dir"] = str(runs_dir)
    return tree


def _method_section(entry: MethodEntry) -> dict[str, Any]:
    return {"name": entry.name, "weights": dict(entry.weights), "params": copy.deepcopy(entry.params)}


def expand(study: StudyConfig, folder: Path, study_dir: Path) -> list[Job]:
    """Every job of the study, in start order (see the module docstring)."""
    from kdlab.methods import METHODS  # imported here: the report reads jobs without needing torch

    base = base_tree(study, folder)
    runs_dir = study_dir / "runs"
    conditions = expand_conditions(study.conditions)
    teachers: dict[str, Job] = {}
    fills: dict[str, Job] = {}
    jobs: list[Job] = []
    for seed in study.seeds:
        students: list[Job] = []
        fresh: list[Job] = []
        fresh_fills: list[Job] = []
        for condition in conditions:
            for pair in study.pairs:
                for entry in study.methods:
                    if entry.pairs is not None and pair.name not in entry.pairs:
                        continue
                    draws = range(study.search.draws) if entry.search else [None]
                    for index in draws:
                        job = _student_job(study, base, runs_dir, condition, pair, entry, seed, index)
                        students.append(job)
                    method = _method(METHODS, entry.name)
                    if method.needs_teacher:
                        teacher = _teacher_job(study, base, runs_dir, condition, pair, seed)
                        if teacher.id not in teachers:
                            teachers[teacher.id] = teacher
                            fresh.append(teacher)
                        checkpoint = _teacher_checkpoint(study, runs_dir, teacher)
                        for job in students[-len(draws):]:
                            job.tree["teacher"] = {"name": pair.teacher, "checkpoint": str(checkpoint)}
                            job.depends = job.teacher_job = teacher.id
                            if study.teacher.share_outputs and shared_cache.replays(method, job.tree):
                                fill = _fill_job(job, teacher, study_dir)
                                if fill.id not in fills:
                                    fills[fill.id] = fill
                                    fresh_fills.append(fill)
                                shared_cache.attach(job.tree, fills[fill.id].tree)
                                job.depends = job.shared_cache = fill.id
        jobs += fresh + fresh_fills + students
    return jobs


def _fill_job(student: Job, teacher: Job, study_dir: Path) -> Job:
    """The job filling the shared cache ``student`` replays; it waits for ``teacher``."""
    job_id, tree = shared_cache.fill_config(student.tree, teacher.id, teacher.seed, study_dir)
    return Job(job_id, "cache", teacher.condition, student.pair, teacher.model, "cache", "cache-teacher",
               teacher.seed, tree, teacher_model=teacher.model, depends=teacher.id, teacher_job=teacher.id)


def _teacher_checkpoint(study: StudyConfig, runs_dir: Path, teacher: Job) -> Path:
    """``teacher.checkpoint``: ``best`` is the run directory (its result: the validation-selected model,
    or the final average of a weight-averaged run); ``last`` its ``last.pt``, unless the teacher averages
    weights, whose last model is the average (the directory again)."""
    path = runs_dir / teacher.id
    averaged = (teacher.tree.get("averaging") or {}).get("strategy", "none") != "none"
    return path / "last.pt" if study.teacher.checkpoint == "last" and not averaged else path


def _method(methods: Any, name: str) -> Any:
    try:
        return methods.get(name)
    except KeyError as exc:
        raise ConfigError(f"methods: {exc}") from None


def _student_job(study: StudyConfig, base: dict[str, Any], runs_dir: Path, condition: Condition,
                 pair: PairConfig, entry: MethodEntry, seed: int, draw: int | None) -> Job:
    """A student run; ``draw`` (None: the method searches nothing) is its hyper-parameter draw, whose
    values are set over the method entry's. ``searched``: every searched key's value in the run's config
    (None where neither the draw nor the entry sets it: the method's default)."""
    tag = "" if draw is None else f"_d{draw}"
    job_id = f"student_{condition.name}_{pair_slug(pair.name)}_{slug(entry.title)}{tag}_s{seed}"
    tree = _run_tree(base, entry.overrides, condition, pair.student, _method_section(entry), seed, job_id,
                     runs_dir)
    values = {} if draw is None else search.draw(entry.search, study.search.seed, entry.title, draw)
    for key, value in values.items():
        set_dotted(tree, key.split("."), value)
    searched = {}
    if draw is not None:
        flat = flatten(tree)
        searched = {key: flat.get(key) for key in sorted(entry.search)}
    return Job(job_id, "student", condition, pair.name, pair.student, entry.title, entry.name, seed, tree,
               teacher_model=pair.teacher, labels_key=condition.name if condition.noise else None, draw=draw,
               searched=searched)


def _teacher_job(study: StudyConfig, base: dict[str, Any], runs_dir: Path, condition: Condition,
                 pair: PairConfig, seed: int) -> Job:
    data = condition if study.teacher.data == "corrupted" else CLEAN
    teacher_seed = seed if study.teacher.per_seed else study.seeds[0]
    job_id = f"teacher_{data.name}_{slug(pair.teacher)}_s{teacher_seed}"
    tree = _run_tree(base, study.teacher.overrides, data, pair.teacher, {"name": "ce"}, teacher_seed, job_id,
                     runs_dir)
    return Job(job_id, "teacher", data, pair.teacher, pair.teacher, "teacher", "ce", teacher_seed, tree,
               labels_key=data.name if data.noise else None)
