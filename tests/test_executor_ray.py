"""The Ray backend: the same study as locally, a lost worker, a killed driver, and kdlab dg, on a local
Ray instance of 2 CPUs started once for the module."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml

from kdlab.cli.main import main as cli_main
from kdlab.protocols.records import read_results
from kdlab.protocols.study import Study
from kdlab.protocols.study_schema import StudyConfig
from tests.test_dg import write_dg_files
from tests.test_study import study_tree

pytestmark = pytest.mark.ray
METRICS = ("metrics", "result", "hparams", "axes", "train_counts")


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def run_study(tmp_path, backend, **changes):
    tree = study_tree(tmp_path / backend, executor={"backend": backend}, threads_per_worker=1, **changes)
    return Study(StudyConfig.model_validate(tree), tmp_path, poll_interval=0.05, echo=lambda _: None)


def logged_pids(log: Path, what: str) -> list[int]:
    return [int(pid) for pid in re.findall(rf"{what} (\d+)", log.read_text())] if log.is_file() else []


def wait_for(condition, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def wait_gone(pid: int) -> None:
    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 30)


def test_a_study_on_ray_finishes_the_same_runs_with_the_same_metrics_as_locally(tmp_path, ray_address):
    changes = {"conditions": {}, "methods": [{"name": "kd"}], "baseline": None, "workers": 2}
    local, on_ray = run_study(tmp_path, "local", **changes), run_study(tmp_path, "ray", **changes)
    assert local.run().ok and on_ray.run().ok
    by_backend = [{r["id"]: r for r in read_results(s.dir / "results.jsonl")} for s in (local, on_ray)]
    assert sorted(by_backend[0]) == sorted(by_backend[1]) and len(by_backend[0]) == 2
    for job_id, record in by_backend[0].items():
        assert {k: record[k] for k in METRICS} == {k: by_backend[1][job_id][k] for k in METRICS}
    node_lines = (on_ray.dir / "logs" / f"{on_ray.jobs[0].id}.log").read_text()
    assert "kdlab: on node" in node_lines  # it did run as a Ray task
    again = run_study(tmp_path, "ray", **changes).run()
    assert len(again.skipped) == 2 and not again.done
    assert len(read_results(on_ray.dir / "results.jsonl")) == 2


def test_a_killed_ray_worker_is_retried_and_resumes_from_last_pt(tmp_path, ray_address):
    base = study_tree(tmp_path)["base"]
    base = {**base, "train": {**base["train"], "steps": 300, "eval_every": 10}}
    study = run_study(tmp_path, "ray", base=base, methods=[{"name": "ce"}], conditions={})
    job = study.jobs[0].id
    log, last = study.dir / "logs" / f"{job}.log", study.dir / "runs" / job / "last.pt"
    outcomes = []
    thread = threading.Thread(target=lambda: outcomes.append(study.run()))
    thread.start()
    try:
        wait_for(lambda: last.is_file() and logged_pids(log, "Ray worker pid"))
        worker, run = logged_pids(log, "Ray worker pid")[0], logged_pids(log, "run pid")[0]
        os.kill(worker, signal.SIGKILL)
        wait_gone(run)  # the run dies with its worker
    finally:
        thread.join(timeout=300)
    assert outcomes and outcomes[0].ok
    status = json.loads((study.dir / "status" / f"{job}.json").read_text())
    assert status["attempt"] == 2 and status["resumed"] is True and status["state"] == "done"
    assert len(logged_pids(log, "Ray worker pid")) == 2
    records = read_results(study.dir / "results.jsonl")
    assert [r["id"] for r in records] == [job] and records[0]["cost"]["steps"] == 300


def test_a_killed_or_stopped_driver_on_ray_then_rerun_loses_and_repeats_nothing(tmp_path, ray_address):
    tree = study_tree(tmp_path, methods=[{"name": "ce"}], conditions={}, seeds=[0, 1], workers=1,
                      executor={"backend": "ray", "address": ray_address})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tree))
    study_dir = tmp_path / "studies" / "tiny"
    first, second = (f"student_clean_cnn_tiny-to-cnn_tiny_ce_s{seed}" for seed in (0, 1))
    driver = subprocess.Popen([sys.executable, "-m", "kdlab.cli.main", "study", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: logged_pids(study_dir / "logs" / f"{second}.log", "run pid"), 300)
    driver.kill()
    driver.wait()
    assert [r["id"] for r in read_results(study_dir / "results.jsonl")] == [first]
    stamp = (study_dir / "runs" / first / "summary.json").stat().st_mtime_ns
    orphan = logged_pids(study_dir / "logs" / f"{second}.log", "run pid")[0]
    wait_gone(orphan)  # Ray ends a dead driver's tasks
    driver = subprocess.Popen([sys.executable, "-m", "kdlab.cli.main", "study", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(logged_pids(study_dir / "logs" / f"{second}.log", "run pid")) == 2, 300)
    driver.send_signal(signal.SIGTERM)  # a polite kill stops the runs like Ctrl-C, ray.init or not
    assert driver.wait(timeout=120) == 130
    assert json.loads((study_dir / "status" / f"{second}.json").read_text())["state"] == "interrupted"
    wait_gone(logged_pids(study_dir / "logs" / f"{second}.log", "run pid")[1])
    assert cli_main(["study", str(path)]) == 0
    assert sorted(r["id"] for r in read_results(study_dir / "results.jsonl")) == [first, second]
    assert (study_dir / "runs" / first / "summary.json").stat().st_mtime_ns == stamp


def test_dg_on_ray_runs_each_student_after_its_teacher(tmp_path, ray_address):
    _, paths = write_dg_files(tmp_path)
    out = tmp_path / "dg"
    argv = ["dg", str(paths["kd_wakd"]), "--teacher", str(paths["teacher"]), "--out-dir", str(out),
            "--targets", "+90%", "--backend", "ray", "--quiet"]
    assert cli_main(argv) == 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [(x["config"], x["target_name"]) for x in lines] == [("teacher", "+90%"), ("kd_wakd", "+90%")]
    for domain in ("+90%",):
        teacher = json.loads((out / "status" / f"teacher__{domain}__seed0.json").read_text())
        student = json.loads((out / "status" / f"kd_wakd__{domain}__seed0.json").read_text())
        summary = out / "teacher" / domain / "seed0" / "summary.json"
        assert teacher["state"] == "done" and student["started"] >= summary.stat().st_mtime
        assert "kdlab: on node" in (out / "logs" / f"kd_wakd__{domain}__seed0.log").read_text()
    assert "| kd_wakd |" in (out / "results.md").read_text()
