"""Teacher outputs shared within a study: one cache fill per teacher, replayed by the students that can."""

import pytest
import torch

from kdlab.assembly import build_run_data, build_run_distiller
from kdlab.config import load_config
from kdlab.core.runtime import Runtime
from kdlab.methods.base import Distiller
from kdlab.protocols.records import read_results
from kdlab.run.teacher_cache import attach_teacher_cache
from tests.test_study import InProcess, job_name, make_study

TEACHER = "teacher_clean_cnn_tiny_s0"
BASE = {"data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1, "subset": 256,
                 "augment": "standard"},
        "student": {"name": "cnn_tiny"},
        "train": {"epochs": 2, "eval_every": 1, "precision": "fp32", "progress": False}}
LOGIT_METHODS = [{"name": "kd"}, {"name": "dkd"}, {"name": "ipwd"}]


def shared_study(tmp_path, launcher=None, methods=LOGIT_METHODS, **changes):
    changes = {"conditions": {}, **changes, "teacher": {"per_seed": False, **changes.get("teacher", {})}}
    return make_study(tmp_path, launcher, base=BASE, methods=methods, baseline=None, seeds=[0, 1], **changes)


class LiveTeacher(InProcess):
    """``InProcess`` that also records the jobs in which a distiller ran its teacher on a batch."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.live, self.current = set(), None
        original = Distiller.teacher_logits

        def recorded(distiller, inputs):
            self.live.add(self.current)
            return original(distiller, inputs)

        monkeypatch.setattr(Distiller, "teacher_logits", recorded)

    def __call__(self, command, log, env):
        process = super().__call__(command, log, env)
        job, poll = job_name(command), process.poll

        def run():
            self.current = job
            return poll()

        process.poll = run
        return process


def test_one_fill_per_teacher_serves_every_replaying_method_seed_and_draw(tmp_path):
    methods = [*LOGIT_METHODS, {"name": "at"}, {"name": "ce"},
               {"name": "kd", "label": "kd-search", "search": {
                   "method.params.temperature": {"distribution": "uniform", "low": 1, "high": 8}}}]
    study = shared_study(tmp_path, methods=methods, search={"draws": 2},
                         conditions={"noise": [{"rates": [0.0, 0.4]}]}, teacher={"data": "clean"})
    fills = [job for job in study.jobs if job.role == "cache"]
    assert len(fills) == 1 and fills[0].depends == TEACHER
    assert [job.role for job in study.jobs[:2]] == ["teacher", "cache"]
    cache_path = fills[0].tree["teacher_cache"]["path"]
    assert cache_path == str((study.dir / "teacher_cache" / fills[0].id).resolve())
    students = [job for job in study.jobs if job.role == "student"]
    assert len(students) == 2 * 2 * (3 + 1 + 1 + 2)
    for job in students:
        replays = job.method_name in ("kd", "dkd", "ipwd")
        assert job.depends == (fills[0].id if replays else TEACHER if job.method_name == "at" else None)
        assert (job.tree.get("teacher_cache") or {}).get("path") == (cache_path if replays else None)
        assert job.teacher_job == (None if job.method_name == "ce" else TEACHER)
    assert fills[0].tree["teacher_cache"]["epochs"] == 2 and "noise" not in fills[0].tree["data"]


def test_sharing_off_or_a_step_budget_keeps_the_live_teacher(tmp_path):
    off = shared_study(tmp_path, teacher={"share_outputs": False})
    steps = shared_study(tmp_path, overrides={"train.epochs": None, "train.steps": 3})
    for study in (off, steps):
        assert [job.role for job in study.jobs] == ["teacher"] + ["student"] * 6
        assert all(job.depends == TEACHER and "teacher_cache" not in job.tree for job in study.jobs[1:])


def test_students_replay_the_shared_cache_without_running_the_teacher(tmp_path, monkeypatch):
    launcher = LiveTeacher(monkeypatch)
    study = shared_study(tmp_path, launcher, methods=[*LOGIT_METHODS, {"name": "at"}])
    assert study.run().ok
    fill = next(job.id for job in study.jobs if job.role == "cache")
    assert launcher.jobs().count(fill) == 1 and launcher.jobs()[:2] == [TEACHER, fill]
    students = [job for job in study.jobs if job.role == "student"]
    assert launcher.live == {job.id for job in students if job.method_name == "at"}
    records = {r["id"]: r for r in read_results(study.dir / "results.jsonl")}
    assert set(records) == {TEACHER, *(job.id for job in students)}
    for job in students:
        assert records[job.id]["teacher_run"] == TEACHER
        assert records[job.id]["shared_cache"] == (None if job.method_name == "at" else fill)
        assert records[job.id]["metrics"]["test_last"]["top1"] >= 0
    for job in students:
        if job.method_name == "at":
            continue
        config = load_config(study.dir / "configs" / f"{job.id}.yaml")
        data = build_run_data(config, Runtime(seed=config.train.seed))
        distiller = build_run_distiller(config, data)
        attach_teacher_cache(config, data, distiller, torch.device("cpu"))
        batch = next(iter(data.train))
        assert batch.teacher is not None
        cached = distiller(batch).losses
        live = distiller(batch._replace(teacher=None)).losses
        for name in live:
            assert cached[name].item() == pytest.approx(live[name].item(), rel=1e-2, abs=1e-4), (job.id, name)

    rerun = InProcess()
    assert shared_study(tmp_path, rerun, methods=[*LOGIT_METHODS, {"name": "at"}]).run().ok
    assert rerun.commands == []
    (study.dir / "runs" / students[0].id / "summary.json").unlink()
    again = InProcess()
    assert shared_study(tmp_path, again, methods=[*LOGIT_METHODS, {"name": "at"}]).run().ok
    assert again.jobs() == [students[0].id]


def test_sharing_off_runs_the_teacher_in_every_student(tmp_path, monkeypatch):
    launcher = LiveTeacher(monkeypatch)
    study = shared_study(tmp_path, launcher, methods=[{"name": "kd"}], teacher={"share_outputs": False})
    assert study.run().ok
    assert launcher.jobs() == [TEACHER, "student_clean_cnn_tiny-to-cnn_tiny_kd_s0",
                               "student_clean_cnn_tiny-to-cnn_tiny_kd_s1"]
    assert launcher.live == set(launcher.jobs()[1:])
    assert not (study.dir / "teacher_cache").exists()
    assert all(r["shared_cache"] is None for r in read_results(study.dir / "results.jsonl"))
