"""Study grids: expansion, scheduling, resume after a crash, the CLI, and the report."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdlab.cli.main import main as cli_main
from kdlab.config import load_config
from kdlab.config.load import ConfigError, validate
from kdlab.engine.callbacks import Callback
from kdlab.methods.registry import resolve_method
from kdlab.protocols.grid import expand, expand_conditions
from kdlab.protocols.records import read_results
from kdlab.protocols.study import Study
from kdlab.protocols.study_schema import ConditionsConfig, StudyConfig, load_study
from kdlab.report import write_report
from kdlab.run import train


def study_tree(tmp_path, **changes):
    tree = {
        "name": "tiny",
        "out_dir": str(tmp_path / "studies"),
        "base": {"data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
                 "student": {"name": "cnn_tiny"},
                 "train": {"steps": 3, "eval_every": 1, "precision": "fp32", "progress": False}},
        "pairs": [{"teacher": "cnn_tiny", "student": "cnn_tiny"}],
        "methods": [{"name": "ce"}, {"name": "kd", "weights": {"ce": 0.5, "kd": 0.5}}],
        "conditions": {"noise": [{"type": "symmetric", "rates": [0.0, 0.4]}]},
        "seeds": [0],
    }
    tree.update(changes)
    return tree


def make_study(tmp_path, launcher=None, **changes):
    config = StudyConfig.model_validate(study_tree(tmp_path, **changes))
    kwargs = {"launcher": launcher} if launcher is not None else {}
    return Study(config, tmp_path, poll_interval=0.01, echo=lambda _: None, **kwargs)


class Crash(Callback):
    def on_step_end(self, trainer):
        if trainer.step == 2:
            raise KeyboardInterrupt


class FakeProcess:
    """Runs a ``kdlab train`` command in this process when first polled (no interpreter start-up), or,
    with ``pretend``, only writes the run directory's summary."""

    pid = 0

    def __init__(self, command, crash=False, code=None, pretend=False):
        self.argv, self.crash, self.code, self.pretend = command[3:], crash, code, pretend

    def poll(self):
        if self.code is None:
            if self.crash:
                train(load_config(self.argv[1]), callbacks=[Crash()])
            if self.pretend:
                config = load_config(self.argv[1])
                run_dir = Path(config.out_dir) / config.name
                run_dir.mkdir(parents=True)
                (run_dir / "summary.json").write_text(json.dumps({"test_last": {"top1": 50.0}}))
                self.code = 0
            else:
                self.code = cli_main(self.argv)
        return self.code

    def send_signal(self, sig):
        pass

    def wait(self, timeout=None):
        return self.code if self.code is not None else 130

    def kill(self):
        pass


class InProcess:
    """A launcher recording every command; ``crash`` names a job that is interrupted at step 2, and
    ``fail`` a job whose process exits with 1 without running."""

    def __init__(self, crash=None, fail=None, pretend=False):
        self.commands, self.crash, self.fail, self.pretend = [], crash, fail, pretend

    def __call__(self, command, log, env):
        self.commands.append(command)
        job = job_name(command)
        return FakeProcess(command, crash=job == self.crash, code=1 if job == self.fail else None,
                           pretend=self.pretend)

    def jobs(self):
        return [job_name(c) for c in self.commands]


def job_name(command):
    """The job a kdlab command runs: its config's stem, or the run directory it resumes."""
    if "cache-teacher" in command:
        return Path(command[-1]).stem
    return Path(command[-2]).stem if "--resume" not in command else Path(command[-2]).name


def test_conditions_and_expansion(tmp_path):
    conditions = expand_conditions(ConditionsConfig.model_validate(
        {"noise": [{"rates": [0, 0.2]}, {"type": "pairflip", "rates": [0.2]}],
         "imbalance": [{"ratios": [1, 10]}]}))
    assert [c.name for c in conditions] == ["clean", "noise-symmetric-0.2", "noise-pairflip-0.2",
                                            "imb-exponential-10"]
    crossed = expand_conditions(ConditionsConfig.model_validate(
        {"noise": [{"rates": [0, 0.2]}], "imbalance": [{"ratios": [1, 10]}], "cross": True}))
    assert [c.name for c in crossed] == ["clean", "imb-exponential-10", "noise-symmetric-0.2",
                                         "noise-symmetric-0.2_imb-exponential-10"]
    with pytest.raises(ConfigError, match="both give condition 'noise-symmetric-0.2'"):
        expand_conditions(ConditionsConfig.model_validate(
            {"noise": [{"rates": [0.2]}, {"rates": [0.2], "include_true_class": True}]}))
    config = StudyConfig.model_validate(study_tree(tmp_path, seeds=[0, 1]))
    jobs = expand(config, tmp_path, tmp_path / "s")
    teachers = [j for j in jobs if j.role == "teacher"]
    assert len(jobs) == 2 * 2 * 2 + 2 * 2 and len({j.id for j in jobs}) == len(jobs)
    assert all(j.depends is None for j in jobs if j.method == "ce")
    assert all(j.depends in {t.id for t in teachers} for j in jobs if j.method == "kd")
    assert [j.seed for j in jobs] == sorted(j.seed for j in jobs)  # seed by seed
    for job in jobs:
        validate(job.tree, source=job.id)
        assert job.tree["train"]["seed"] == job.seed and job.tree["train"]["per_class"] == "on"
        assert ("noise" in job.tree["data"]) == (job.condition.noise_rate > 0)
    one_teacher = study_tree(tmp_path, seeds=[0, 1], teacher={"per_seed": False})
    shared = expand(StudyConfig.model_validate(one_teacher), tmp_path, tmp_path / "s")
    assert len([j for j in shared if j.role == "teacher"]) == 2
    clean = expand(StudyConfig.model_validate(study_tree(tmp_path, teacher={"data": "clean"})),
                   tmp_path, tmp_path / "s")
    assert [j.id for j in clean if j.role == "teacher"] == ["teacher_clean_cnn_tiny_s0"]


def test_study_file_errors_are_one_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_tree(tmp_path, methods=[{"name": "kd", "parms": {}}])))
    with pytest.raises(ConfigError, match=r"unknown key 'methods.0.parms' \(did you mean 'params'\?\)"):
        load_study(path)
    path.write_text(yaml.safe_dump(study_tree(tmp_path, baseline="CE")))
    with pytest.raises(ConfigError, match="baseline 'CE' is not among"):
        load_study(path)


def test_study_crash_and_resume_repeats_nothing_and_loses_nothing(tmp_path):
    changes = {"conditions": {"noise": [{"rates": [0.4]}]}, "workers": 2}
    crashed = "student_noise-symmetric-0.4_cnn_tiny-to-cnn_tiny_kd_s0"
    first = InProcess(crash=crashed)
    with pytest.raises(KeyboardInterrupt):
        make_study(tmp_path, first, **changes).run()
    study_dir = tmp_path / "studies" / "tiny"
    done_before = [r["id"] for r in read_results(study_dir / "results.jsonl")]
    assert len(done_before) == 2 and crashed not in done_before
    assert (study_dir / "runs" / crashed / "last.pt").is_file()
    assert json.loads((study_dir / "status" / f"{crashed}.json").read_text())["state"] == "interrupted"
    # a run that finished without its results line (a crash between the two) is recorded, not rerun
    (study_dir / "results.jsonl").write_text((study_dir / "results.jsonl").read_text().splitlines()[0] + "\n")

    second = InProcess()
    assert make_study(tmp_path, second, **changes).run().ok
    assert second.jobs() == [crashed] and "--resume" in second.commands[0]
    records = read_results(study_dir / "results.jsonl")
    assert sorted(r["id"] for r in records) == sorted([*done_before, crashed])
    resumed = next(r for r in records if r["id"] == crashed)
    assert resumed["cost"]["steps"] == 3 and resumed["realized_noise_train"] == pytest.approx(0.4, abs=1e-3)
    labels = str((study_dir / "labels" / "noise-symmetric-0.4.pt").resolve())
    for job in ("teacher_noise-symmetric-0.4_cnn_tiny_s0", crashed):
        assert yaml.safe_load((study_dir / "runs" / job / "config.yaml").read_text())["data"]["noise"][
            "labels"] == labels
    third = InProcess()
    assert make_study(tmp_path, third, **changes).run().ok and third.commands == []


def test_failed_teacher_blocks_its_students_and_is_retried(tmp_path):
    changes = {"conditions": {}, "methods": [{"name": "kd"}], "baseline": None}
    failing = InProcess(fail="teacher_clean_cnn_tiny_s0", pretend=True)
    outcome = make_study(tmp_path, failing, **changes).run()
    assert outcome.failed == ["teacher_clean_cnn_tiny_s0"] and len(outcome.blocked) == 1
    retry = InProcess(pretend=True)
    assert make_study(tmp_path, retry, **changes).run().ok and len(retry.commands) == 2


def test_cli_study_killed_mid_run_then_resumed(tmp_path):
    """The real thing: ``kdlab study`` killed (SIGKILL) after its first run; its child dies with it, and
    rerunning the command finishes the study without redoing the finished run."""
    tree = study_tree(tmp_path, methods=[{"name": "ce"}], conditions={}, seeds=[0, 1], workers=1)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tree))
    study_dir = tmp_path / "studies" / "tiny"
    parent = subprocess.Popen([sys.executable, "-m", "kdlab.cli.main", "study", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = study_dir / "status" / "student_clean_cnn_tiny-to-cnn_tiny_ce_s1.json"
    deadline = time.monotonic() + 300
    while not second.is_file() and time.monotonic() < deadline:  # the first run is done, the second started
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    finished = [r["id"] for r in read_results(study_dir / "results.jsonl")]
    assert finished == ["student_clean_cnn_tiny-to-cnn_tiny_ce_s0"]
    stamp = (study_dir / "runs" / finished[0] / "summary.json").stat().st_mtime_ns
    orphan = json.loads(second.read_text())
    for _ in range(100):  # the second run's process ends with its parent
        try:
            os.kill(orphan["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the killed study left its child running")
    assert cli_main(["study", str(path)]) == 0
    records = read_results(study_dir / "results.jsonl")
    assert sorted(r["id"] for r in records) == [finished[0], "student_clean_cnn_tiny-to-cnn_tiny_ce_s1"]
    assert (study_dir / "runs" / finished[0] / "summary.json").stat().st_mtime_ns == stamp


def fake_record(method, condition, seed, top1, noise=0.0, ratio=1.0, role="student", **extra):
    return {"id": f"{role}_{condition}_{method}_s{seed}", "role": role, "condition": condition,
            "noise_type": "symmetric" if noise else None, "noise_rate": noise,
            "imbalance_profile": "exponential" if ratio > 1 else None, "imbalance_ratio": ratio,
            "pair": "big->small", "model": "small", "method": method, "seed": seed,
            "run_dir": f"runs/{method}_{condition}_{seed}", "teacher_run": None,
            "test_last": {"top1": top1, "per_class_top1": [top1, top1 - 10], "top1_many": top1 + 5,
                          "top1_few": top1 - 5},
            "classes": ["a", "b"], **extra}


def test_report_on_a_fake_results_file(tmp_path):
    records = []
    for seed, shift in ((0, 0.0), (1, 2.0)):
        for condition, noise, ratio, base in (("clean", 0, 1, 90), ("noise-symmetric-0.4", 0.4, 1, 70),
                                              ("imb-exponential-10", 0, 10, 80)):
            counts = [100, 10] if ratio > 1 else None
            records.append(fake_record("ce", condition, seed, base + shift, noise, ratio, train_counts=counts,
                                       realized_noise_train=noise or None))
            teacher = f"teacher_{condition}_teacher_s{seed}"
            records.append(fake_record("kd", condition, seed, base + 1 + shift, noise, ratio,
                                       train_counts=counts, teacher_run=teacher))
            records.append(fake_record("teacher", condition, seed, base + 5, noise, ratio, role="teacher"))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"torn')
    path = write_report(tmp_path)
    text = path.read_text()
    row = "| kd | 92.00 ± 1.41 (+1.00) | 72.00 ± 1.41 (+1.00) | 82.00 ± 1.41 (+1.00) |"
    assert row in text.replace("**", "")
    assert "| teacher (CE) | 95.00 ± 0.00 | 75.00 ± 0.00 | 85.00 ± 0.00 |" in text
    assert "| ce | 81.00 ± 1.41 | 86.00 ± 1.41 | - | 76.00 ± 1.41 |" in text  # top-1, many, medium, few
    for name in ("noise_big-to-small_symmetric.png", "imbalance_big-to-small_exponential.png",
                 "per_class_big-to-small_clean.png"):
        assert (path.parent / name).stat().st_size > 10_000 and f"]({name})" in text
    assert not list(path.parent.glob("curves_*"))  # no run directories: no curves, no error
    assert cli_main(["report", str(tmp_path / "missing")]) == 2


STUDIES = sorted((Path(__file__).parents[1] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_studies_expand_into_valid_runs(path):
    config, folder = load_study(path)
    jobs = expand(config, folder, Path("studies-out"))
    assert jobs and len({j.id for j in jobs}) == len(jobs)
    for job in jobs:
        run = validate(job.tree, source=job.id)
        method, _, _ = resolve_method(run.method, job.id)
        assert (run.teacher is not None) == method.needs_teacher


@pytest.mark.parametrize(("changes", "expected"), [
    ({"pairs": [{"teacher": "cnn_tiny", "student": "cnn_smal"}]}, "student.name: unknown model 'cnn_smal'"),
    ({"methods": [{"name": "ce"}, {"name": "kd", "params": {"temprature": 4}}]}, "method.params.temprature"),
    ({"methods": [{"name": "ce"}, {"name": "kd", "weights": {"kdd": 1}}]}, "method.weights.kdd"),
])
def test_check_finds_what_runs_would_refuse_before_any_starts(tmp_path, changes, expected):
    make_study(tmp_path).check()
    with pytest.raises(ConfigError, match=re.escape(expected)):
        make_study(tmp_path, **changes).check()


def test_run_checks_every_job_before_writing_anything(tmp_path):
    study = make_study(tmp_path, pairs=[{"teacher": "cnn_tiny", "student": "cnn_smal"}])
    with pytest.raises(ConfigError, match="unknown model 'cnn_smal'"):
        study.run()
    assert not (study.dir / "study.yaml").exists() and not (study.dir / "runs").exists()
