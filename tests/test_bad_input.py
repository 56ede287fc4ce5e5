"""User mistakes end in one line naming the key or file, exit code 2, and leave nothing half-written."""

import json

import numpy as np
import pytest
import torch
import yaml

from kdlab.cli.main import main
from kdlab.models import build_model
from tests.helpers import one_line_error, write


@pytest.fixture
def teacher_file(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save(build_model("cnn_tiny", 10, in_channels=1).state_dict(), path)
    return str(path)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["train.seed=-1"], "train.seed"),
    (["optim.name=adam", "optim.betas=[0.9,1.5]"], "optim.betas.1"),
    (["optim.momentum=1.0"], "optim.momentum"),
    (["schedule.gamma=-0.5"], "schedule.gamma"),
    (["schedule.milestones=[-1]"], "schedule.milestones.0"),
    (["method.weights.ce=-1"], "method.weights.ce"),
    (["method.weights.ce=0"], "method.weights: every loss term"),
    (["data.mean=[0]", "data.std=[0]"], "data.std.0"),
    (["optim.lr=.nan"], "optim.lr"),
    (["train.device=gpu0"], "train.device"),
    (["train.precision=fp16"], "train.precision"),
    (["name=../escape"], "name"),
    (["student.mean=[0.5,0.5,0.5]", "student.std=[0.2,0.2,0.2]"], "mean/std have 3/3 values"),
    (["student.pretrained=/nonexistent/weights.pt"], "student.pretrained"),
    (["method.name=kd", "method.params.temperature=.inf"], "method.params.temperature"),
    (["averaging.params.decay=0.9"], "strategy is 'none'"),
    (['data.noise={"type": "pairflip", "rate": 0.2, "include_true_class": true}'], "include_true_class"),
    (['data.noise={"type": "symmetric", "rate": 0.2, "flip_map": {"3": "4"}}'], "flip_map applies"),
])
def test_config_mistakes_are_one_line(tmp_path, capsys, quick, teacher_file, overrides, expected):
    tree = quick()
    if any("method.name=kd" in o for o in overrides):
        tree["teacher"] = {"name": "cnn_tiny", "checkpoint": teacher_file}
    err = one_line_error(capsys, ["train", write(tmp_path, tree), *overrides, "--quiet"])
    assert expected in err


def test_method_that_needs_a_teacher_and_a_missing_hook_path_are_one_line(tmp_path, capsys, quick,
                                                                           teacher_file):
    no_teacher = write(tmp_path, quick(method={"name": "kd"}))
    assert "needs a teacher" in one_line_error(capsys, ["train", no_teacher])
    tree = quick(method={"name": "at", "params": {"student_layers": ["nosuch"]}},
                 teacher={"name": "cnn_tiny", "checkpoint": teacher_file})
    assert "nosuch" in one_line_error(capsys, ["train", write(tmp_path, tree)])


def test_duplicate_yaml_key_is_refused(tmp_path, capsys, quick):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(quick()) + "optim:\n  lr: 0.5\n")
    assert "duplicate key 'optim'" in one_line_error(capsys, ["train", str(path)])


def test_stage_that_trains_nothing_is_refused(tmp_path, capsys, quick):
    tree = quick(stages=[{"name": "frozen", "steps": 2, "freeze": ["student"]}])
    tree["train"] = {"precision": "fp32", "progress": False}
    assert "no parameter to train" in one_line_error(capsys, ["train", write(tmp_path, tree)])


def test_out_dir_that_is_a_file_is_one_line(tmp_path, capsys, quick):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert "out_dir" in one_line_error(capsys, ["train", write(tmp_path, quick()), f"out_dir={blocker}"])


def test_a_kdlab_checkpoint_given_as_pretrained_points_to_checkpoint(tmp_path, capsys, quick, finished_run):
    err = one_line_error(capsys, ["train", write(tmp_path, quick(name="again")),
                                  f"student.pretrained={finished_run / 'last.pt'}"])
    assert "student.pretrained" in err and "'checkpoint'" in err


def test_averaging_that_would_average_nothing_is_refused(tmp_path, capsys, quick):
    tree = quick(averaging={"strategy": "ema", "params": {"start_step": 50}})
    assert "would average nothing" in one_line_error(capsys, ["train", write(tmp_path, tree)])


def test_refused_resume_leaves_the_run_resumable(capsys, finished_run):
    saved = (finished_run / "config.yaml").read_text()
    err = one_line_error(capsys, ["train", "--resume", str(finished_run), "train.steps=2", "--quiet"])
    assert "past this config's budget of 2" in err
    err = one_line_error(capsys, ["train", "--resume", str(finished_run), "student.name=cnn_small"])
    assert err.startswith("kdlab: error: student.name: a resumed run cannot change it")
    err = one_line_error(capsys, ["train", "--resume", str(finished_run), "data.split_seed=7"])
    assert "data.split_seed" in err
    assert (finished_run / "config.yaml").read_text() == saved
    assert main(["train", "--resume", str(finished_run), "train.steps=5", "--quiet"]) == 0
    assert yaml.safe_load((finished_run / "config.yaml").read_text())["train"]["steps"] == 5


def test_eval_of_the_validation_split_refuses_a_changed_split(capsys, finished_run):
    err = one_line_error(capsys, ["eval", str(finished_run), "data.val_fraction=0.5", "--split", "val"])
    assert "data.val_fraction" in err
    assert main(["eval", str(finished_run), "data.val_fraction=0.5", "--split", "test"]) == 0


def test_export_to_a_file_is_one_line_and_an_export_leaves_no_staging_folder(tmp_path, capsys, finished_run):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert "--out" in one_line_error(capsys, ["export", str(finished_run), "--out", str(blocker)])
    assert main(["export", str(finished_run), "--out", str(tmp_path / "x"), "--format", "state_dict"]) == 0
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["export.json", "model.pt"]
    assert not [p for p in tmp_path.iterdir() if ".export-" in p.name]


def test_damaged_or_differently_made_teacher_cache_is_one_line(tmp_path, capsys, quick, teacher_file):
    tree = quick(name="cached", method={"name": "kd"},
                 teacher={"name": "cnn_tiny", "checkpoint": teacher_file},
                 teacher_cache={"path": str(tmp_path / "cache"), "epochs": 1})
    config = write(tmp_path, tree)
    assert main(["cache-teacher", config]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, ["train", config, "teacher_cache.outputs=topk", "teacher_cache.topk=3"])
    assert "different outputs" in err
    logits = tmp_path / "cache" / "logits.npy"
    np.save(logits, np.zeros((1, 3), dtype=np.float16))
    assert "logits.npy" in one_line_error(capsys, ["train", config])
    (tmp_path / "cache" / "meta.json").write_text("{broken")
    assert "meta.json is damaged" in one_line_error(capsys, ["train", config])


def test_cli_counts_must_be_positive(capsys, finished_run):
    for argv in (["study", "x.yaml", "--workers", "0"], ["cache-teacher", "x.yaml", "--num-shards", "0"],
                 ["export", str(finished_run), "--out", "y", "--check-batch", "-3"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "expected at least" in capsys.readouterr().err


def test_report_to_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    results = tmp_path / "study" / "results.jsonl"
    results.parent.mkdir()
    results.write_text(json.dumps({"role": "student", "method": "ce", "seed": 0}) + "\n")
    assert main(["report", str(results.parent), "--out", str(blocker)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_model_that_cannot_take_the_images_is_refused_before_training():
    from kdlab.assembly import check_input_shape
    from kdlab.config import ConfigError

    model = build_model("cnn_tiny", 10, in_channels=1).train()
    check_input_shape(model, (1, 8, 8), "student.name")
    assert model.training
    with pytest.raises(ConfigError, match="student.name: .* cannot take the data's 1x2x2 images"):
        check_input_shape(model, (1, 2, 2), "student.name")
    assert model.training
