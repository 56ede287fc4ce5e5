"""Study grids: expansion, scheduling, resume after a crash, the CLI, and the report."""

import json
import os
import signal
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
    """Runs a ``kdlab train`` command in this process when first polled (no interpreter start-up)."""

    pid = 0

    def __init__(self, command, crash=False, code=None):
        self.argv, self.crash, self.code = command[3:], crash, code

    def poll(self):
        if self.code is None:
            if self.crash:
                train(load_config(self.argv[1]), callbacks=[Crash()])
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

    def __init__(self, crash=None, fail=None):
        self.commands, self.crash, self.fail = [], crash, fail

    def __call__(self, command, log, env):
        self.commands.append(command)
        job = Path(command[-2]).stem if "--resume" not in command else Path(command[-2]).name
        return FakeProcess(command, crash=job == self.crash, code=1 if job == self.fail else None)

    def jobs(self):
        return [Path(c[-2]).stem if "--resume" not in c else Path(c[-2]).name for c in self.commands]


def test_conditions_and_expansion(tmp_path):
    conditions = expand_conditions(ConditionsConfig.model_validate(
        {"noise": [{"rates": [0, 0.2]}, {"type": "pairflip", "rates": [0.2]}], "imbalance": [{"ratios": [1, 10]}]}))
    assert [c.name for c in conditions] == ["clean", "noise-symmetric-0.2", "noise-pairflip-0.2",
                                            "imb-exponential-10"]
    crossed = expand_conditions(ConditionsConfig.model_validate(
        {"noise": [{"rates": [0, 0.2]}], "imbalance": [{"ratios": [1, 10]}], "cross": True}))
    assert [c.name for c in crossed] == ["clean", "imb-exponential-10", "noise-symmetric-0.2",
                                         "noise-symmetric-0.2_imb-exponential-10"]
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
    shared = expand(StudyConfig.model_validate(study_tree(tmp_path, seeds=[0, 1], teacher={"per_seed": False})),
                    tmp_path, tmp_path / "s")
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
    crashed = "student_noise-symmetric-0.4_cnn_tiny-to-cnn_tiny_kd_s0"
    first = InProcess(crash=crashed)
    with pytest.raises(KeyboardInterrupt):
        make_study(tmp_path, first, workers=2).run()
    study_dir = tmp_path / "studies" / "tiny"
    done_before = {r["id"] for r in read_results(study_dir / "results.jsonl")}
    assert done_before and crashed not in done_before
    assert (study_dir / "runs" / crashed / "last.pt").is_file()
    assert json.loads((study_dir / "status" / f"{crashed}.json").read_text())["state"] == "interrupted"
    # a run that finished without its results line (crash between the two) is recorded, not rerun
    lines = (study_dir / "results.jsonl").read_text().splitlines()
    (study_dir / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")

    second = InProcess()
    outcome = make_study(tmp_path, second, workers=2).run()
    assert outcome.ok and not set(second.jobs()) & done_before
    assert [c for c in second.commands if "--resume" in c] and crashed in second.jobs()
    records = read_results(study_dir / "results.jsonl")
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted({j.id for j in make_study(tmp_path).jobs}) and len(ids) == len(set(ids)) == 6
    resumed = next(r for r in records if r["id"] == crashed)
    assert resumed["steps"] == 3 and resumed["realized_noise_train"] == pytest.approx(0.4, abs=1e-3)
    labels = study_dir / "labels" / "noise-symmetric-0.4.pt"
    for role in ("teacher_noise-symmetric-0.4_cnn_tiny_s0", crashed):
        noise = yaml.safe_load((study_dir / "runs" / role / "config.yaml").read_text())["data"]["noise"]
        assert noise["labels"] == str(labels.resolve())
    third = InProcess()
    assert make_study(tmp_path, third).run().ok and third.commands == []


def test_failed_teacher_blocks_its_students_and_is_retried(tmp_path):
    changes = {"conditions": {}, "methods": [{"name": "kd"}], "baseline": None}
    failing = InProcess(fail="teacher_clean_cnn_tiny_s0")
    outcome = make_study(tmp_path, failing, **changes).run()
    assert outcome.failed == ["teacher_clean_cnn_tiny_s0"] and len(outcome.blocked) == 1
    retry = InProcess()
    assert make_study(tmp_path, retry, **changes).run().ok and len(retry.commands) == 2


@pytest.mark.slow
def test_cli_study_killed_mid_run_then_resumed(tmp_path):
    tree = study_tree(tmp_path, methods=[{"name": "ce"}], conditions={}, seeds=[0, 1, 2], workers=1)
    tree["base"]["train"]["steps"] = 20
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tree))
    study_dir = tmp_path / "studies" / "tiny"
    parent = subprocess.Popen([sys.executable, "-m", "kdlab.cli.main", "study", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not read_results(study_dir / "results.jsonl") and time.monotonic() < deadline:
        time.sleep(0.2)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    finished = {r["id"] for r in read_results(study_dir / "results.jsonl")}
    assert 1 <= len(finished) < 3
    stamps = {i: (study_dir / "runs" / i / "summary.json").stat().st_mtime_ns for i in finished}
    assert cli_main(["study", str(path)]) == 0
    records = read_results(study_dir / "results.jsonl")
    assert len(records) == len({r["id"] for r in records}) == 3
    assert all((study_dir / "runs" / i / "summary.json").stat().st_mtime_ns == t for i, t in stamps.items())


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
            records.append(fake_record("kd", condition, seed, base + 1 + shift, noise, ratio,
                                       train_counts=counts, teacher_run=f"teacher_{condition}_teacher_s{seed}"))
            records.append(fake_record("teacher", condition, seed, base + 5, noise, ratio, role="teacher"))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"torn')
    path = write_report(tmp_path)
    text = path.read_text()
    assert "| kd | 92.00 ± 1.41 (+1.00) | 72.00 ± 1.41 (+1.00) | 82.00 ± 1.41 (+1.00) |" in text.replace("**", "")
    assert "| teacher (CE) | 95.00 ± 0.00 | 75.00 ± 0.00 | 85.00 ± 0.00 |" in text
    assert "| ce | 81.00 ± 1.41 | 86.00 ± 1.41 | - | 76.00 ± 1.41 |" in text  # top-1, many, medium, few
    for name in ("noise_big-to-small_symmetric.png", "imbalance_big-to-small_exponential.png",
                 "per_class_big-to-small_clean.png"):
        assert (path.parent / name).stat().st_size > 10_000 and f"]({name})" in text
    assert not list(path.parent.glob("curves_*"))  # no run directories: no curves, no error
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
