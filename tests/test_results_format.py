"""One results line format for every protocol: what a study line holds, earlier kdlab lines still read."""

import json

import pytest

from kdlab.cli.main import main as cli_main
from kdlab.protocols.dg import merge_lines
from kdlab.protocols.records import read_results
from kdlab.protocols.result_line import FORMAT, upgrade
from kdlab.report import write_report
from kdlab.report.results import load_results
from tests.test_study import InProcess, make_study

SHARED_KEYS = {"format", "protocol", "id", "run_dir", "config_digest", "seed", "axes", "hparams", "result",
               "metrics", "test", "cost"}


def test_a_study_line_holds_identity_hparams_every_split_and_cost(tmp_path):
    study = make_study(tmp_path, InProcess(), conditions={}, seeds=[3])
    assert study.run().ok
    lines = read_results(study.dir / "results.jsonl")
    kd = next(line for line in lines if line["method"] == "kd")
    assert set(kd) >= SHARED_KEYS and kd["format"] == FORMAT and kd["protocol"] == "study"
    assert kd["axes"] == {"condition": "clean", "pair": "cnn_tiny->cnn_tiny", "method": "kd", "seed": 3}
    assert kd["hparams"]["method.weights.kd"] == 0.5 and kd["hparams"]["optim.lr"] > 0
    assert kd["hparams"]["train.steps"] == 3 and kd["hparams"]["data.batch_size"] == 32
    assert {"val_last", "test_last", "test_selected"} <= set(kd["metrics"])
    assert {"top1", "nll", "ece"} <= set(kd["metrics"]["val_last"])
    assert kd["test"] == kd["metrics"][kd["result"]["reported"]] and kd["result"]["model"] == "student"
    assert kd["result"]["selected"]["metric"] and kd["cost"]["peak_mem_mb"] > 0
    assert kd["cost"]["steps"] == 3 and kd["cost"]["step_time_ms"] > 0
    teacher = next(line for line in lines if line["role"] == "teacher")
    assert teacher["config_digest"] != kd["config_digest"] and kd["teacher_run"] == teacher["id"]
    text = write_report(study.dir).read_text()
    assert "peak memory (MiB)" in text and "| student | kd | 1 |" in text


def legacy_dg_line(tmp_path, seed, acc):
    run_dir = tmp_path / "kd" / "0" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    return {"config": "kd", "dataset": "rotated_mnist", "target": 0, "target_name": "0", "seed": seed,
            "split_seed": 0, "method": "kd", "averaging": "none", "reported": "test_selected",
            "test_acc": acc, "test_last": acc - 1, "test_selected": acc, "online_test_acc": None,
            "val_selected": 90.0, "steps": 10, "step_time_ms": 5.0, "img_per_s": 100.0,
            "train_time_s": 0.05, "run_dir": str(run_dir)}


def test_an_earlier_kdlab_dg_results_file_is_still_reported(tmp_path):
    lines = [legacy_dg_line(tmp_path, seed, acc) for seed, acc in ((0, 80.0), (1, 90.0))]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = load_results(tmp_path)
    assert [r["test"]["top1"] for r in records] == [80.0, 90.0]
    assert records[0]["metrics"]["test_last"] == {"top1": 79.0} and records[0]["cost"]["steps"] == 10
    text = write_report(tmp_path).read_text()
    assert "| kd | 85.0 ± 3.5 | 85.0 |" in text  # population std 5 / sqrt(2)


def test_a_line_of_an_unknown_format_is_one_line(tmp_path, capsys):
    (tmp_path / "results.jsonl").write_text(json.dumps({"format": 99, "id": "x"}) + "\n")
    assert cli_main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 1" in err and "format 99" in err


@pytest.mark.parametrize("record", [{"format": FORMAT, "id": "a"}, {"id": "a", "condition": "clean"}])
def test_upgrade_keeps_current_lines_and_converts_earlier_study_lines(record):
    upgraded = upgrade(record)
    assert upgraded["format"] == FORMAT
    if "condition" in record:
        assert upgraded["protocol"] == "study" and upgraded["axes"]["condition"] == "clean"
    else:
        assert upgraded is record


def test_kdlab_dg_replaces_an_earlier_kdlab_line_of_the_same_run(tmp_path):
    earlier = [upgrade(legacy_dg_line(tmp_path, seed, 80.0)) for seed in (0, 1)]
    new = {**earlier[0], "id": "kd__0__seed0", "run_dir": "kd/0/seed0", "test": {"top1": 81.0}}
    merged = merge_lines(earlier, [new], tmp_path)
    assert merged == [new, earlier[1]]
