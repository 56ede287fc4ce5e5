"""The executor seam without Ray: bounded retries, GPUs handed to the least busy, and the one line a
missing Ray or a contradictory flag gets."""

import json
import sys

import pytest
import yaml

from kdlab.protocols.executor import LocalExecutor, Task
from kdlab.protocols.records import read_results
from tests.helpers import one_line_error
from tests.test_study import FakeProcess, InProcess, make_study, study_tree

CHANGES = {"conditions": {}, "methods": [{"name": "ce"}], "baseline": "ce"}
JOB = "student_clean_cnn_tiny-to-cnn_tiny_ce_s0"


class FailsFirst(InProcess):
    """Each job's first process exits with 1 without running; later ones pretend to train."""

    def __call__(self, command, log, env):
        process = super().__call__(command, log, env)
        if self.jobs().count(self.jobs()[-1]) == 1:
            process.code = 1
        return process


@pytest.mark.parametrize("retries", [0, 1])
def test_a_failed_run_is_tried_again_up_to_retries_times(tmp_path, retries):
    launcher = FailsFirst(pretend=True)
    study = make_study(tmp_path, launcher, executor={"retries": retries}, **CHANGES)
    outcome = study.run()
    assert launcher.jobs() == [JOB] * (retries + 1)
    assert outcome.ok == (retries == 1) and outcome.failed == ([] if retries else [JOB])
    status = json.loads((study.dir / "status" / f"{JOB}.json").read_text())
    assert status["attempt"] == retries + 1 and status["state"] == ("done" if retries else "failed")
    assert [r["id"] for r in read_results(study.dir / "results.jsonl")] == ([JOB] if retries else [])


def test_local_runs_go_to_the_least_busy_device(tmp_path):
    started = []

    def launcher(command, log, env):
        started.append(env["CUDA_VISIBLE_DEVICES"])
        return FakeProcess(command, code=0)

    executor = LocalExecutor(workers=3, threads=1, devices=["0", "1"], launcher=launcher)
    handles = [executor.start(Task(["train", "a.yaml"], tmp_path / "log")) for _ in range(3)]
    assert started == ["0", "1", "0"]
    assert handles[1].poll() == 0  # device 1 is free again
    executor.start(Task(["train", "a.yaml"], tmp_path / "log"))
    assert started[-1] == "1" and executor.describe() == "3 local worker(s) x 1 thread(s)"


def test_without_ray_the_ray_backend_is_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_tree(tmp_path, **CHANGES)))
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "kdlab.protocols.ray_executor", raising=False)
    error = one_line_error(capsys, ["study", str(path), "--backend", "ray"])
    assert 'ray needs Ray, which is not installed; pip install "kdlab[ray]"' in error
    error = one_line_error(capsys, ["study", str(path), "--backend", "local", "--ray-address", "auto"])
    assert "--ray-address" in error and "--backend local" in error
    tree = study_tree(tmp_path, devices=["0"], executor={"backend": "ray"}, **CHANGES)
    path.write_text(yaml.safe_dump(tree))
    assert "request GPUs per run with executor.num_gpus" in one_line_error(capsys, ["study", str(path)])
