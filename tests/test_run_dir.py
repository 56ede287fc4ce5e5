"""The run directory: a hand-edited config is caught on resume, one process at a time, a banner, the
resume command after Ctrl-C."""

import json
import logging

import pytest
import torch
import yaml

from kdlab.assembly import build_run_distiller
from kdlab.cli.main import main
from kdlab.config import validate
from kdlab.core.errors import ConfigError, RunInterrupted
from kdlab.data import build_data
from kdlab.engine.logger import read_metrics
from kdlab.report.domains import table as dg_table
from kdlab.run import train
from kdlab.run.rundir import run_lock

from .test_train import Interrupt


def test_a_hand_edited_config_yaml_is_caught_against_the_checkpoint(digits_config, tmp_path, capsys):
    config = validate(digits_config(name="edited", train={"epochs": 2}))
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(20)])  # past the first epoch's last.pt
    run_dir = tmp_path / "runs" / "edited"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["train"]["seed"] = 7
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("kdlab: error: train.seed: a resumed run cannot change it")
    assert "last.pt" in err


def test_a_second_process_on_the_same_run_directory_is_one_line(tmp_path):
    with run_lock(tmp_path), pytest.raises(ConfigError, match=r"in use by pid \d+ on "), run_lock(tmp_path):
        pass
    with run_lock(tmp_path):  # released when the holder ends
        pass


def test_a_run_prints_a_banner_and_ctrl_c_names_the_resume_command(digits_config, tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="kdlab"), pytest.raises(RunInterrupted) as info:
        train(validate(digits_config(name="cut", train={"epochs": 2})), callbacks=[Interrupt(3)])
    run_dir = tmp_path / "runs" / "cut"
    assert info.value.resume == f"kdlab train --resume {run_dir}"
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("kdlab: run "))
    assert str(run_dir) in line and "student cnn_tiny (" in line and "train/val/test" in line
    assert "steps (2 epochs)" in line
    path = tmp_path / "cut.yaml"
    path.write_text(json.dumps(digits_config(name="cut2", train={"epochs": 1})))
    with pytest.MonkeyPatch.context() as patch:
        def interrupted(self):
            raise KeyboardInterrupt

        patch.setattr("kdlab.engine.trainer.Trainer.fit", interrupted)
        assert main(["train", str(path), "--quiet"]) == 130
    assert f"resume with kdlab train --resume {tmp_path / 'runs' / 'cut2'}" in capsys.readouterr().err


def test_a_lowered_learning_rate_on_resume_is_applied(digits_config, tmp_path):
    base = {"epochs": None, "steps": 30, "eval_every": 10, "log_every": 1}
    config = validate(digits_config(name="lower", train=base, schedule={"name": "constant"}))
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(12)])
    run_dir = tmp_path / "runs" / "lower"
    config.optim.lr = 0.001
    train(config, resume=run_dir)
    rates = {r["step"]: r["lr"] for r in read_metrics(run_dir) if r["kind"] == "train"}
    assert rates[10] == pytest.approx(0.05) and rates[11] == pytest.approx(0.001)
    assert all(rate == pytest.approx(0.001) for step, rate in rates.items() if step > 10)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 0.001


def test_an_averaged_run_reports_the_online_student_beside_the_average(digits_config):
    ema = {"strategy": "ema", "params": {"decay": 0.9}}
    averaged = train(validate(digits_config(name="ema", averaging=ema, train={"epochs": 1})))
    plain = train(validate(digits_config(name="plain", train={"epochs": 1})))
    assert averaged.summary["model"] == "averaged" and averaged.summary["result"] == "test_last"
    online = averaged.summary["online_test_last"]
    assert online["n"] == averaged.summary["test_last"]["n"]
    assert online["nll"] != averaged.summary["test_last"]["nll"]
    assert "online_test_last" not in plain.summary


def test_the_dg_table_has_an_online_student_row_for_averaged_configs():
    lines = [{"config": "wakd", "target_name": "art_painting", "test": {"top1": 80.0},
              "metrics": {"online_test_last": {"top1": 78.0}}},
             {"config": "kd", "target_name": "art_painting", "test": {"top1": 75.0}, "metrics": {}}]
    rows = dg_table(lines, ["art_painting"]).splitlines()
    assert rows[2].startswith("| wakd | 80.0") and rows[3].startswith("| wakd (online student) | 78.0")
    assert rows[4].startswith("| kd | 75.0") and len(rows) == 5


def test_a_teacher_from_a_run_brings_the_normalization_it_was_trained_with(digits_config, tmp_path):
    teacher = train(validate(digits_config(name="teacher", student={"name": "cnn_small"},
                                           data={"mean": [0.5], "std": [0.25]}, train={"epochs": 1})))
    section = {"name": "cnn_small", "checkpoint": str(teacher.run_dir)}
    student = train(validate(digits_config(name="kd", method={"name": "kd"}, teacher=section,
                                           train={"epochs": 1})), write=False)
    assert student.summary["steps"] > 0
    data_mean, data_std = 0.3053, 0.3758  # the student's digits normalization
    distiller = build_run_distiller(validate(digits_config(teacher=section)), digits_data())
    assert distiller.renormalizes
    torch.testing.assert_close(distiller.teacher_input_scale.flatten(), torch.tensor([data_std / 0.25]))
    shift = torch.tensor([(data_mean - 0.5) / 0.25])
    torch.testing.assert_close(distiller.teacher_input_shift.flatten(), shift)
    explicit = {**section, "mean": [0.1], "std": [0.2]}
    with pytest.raises(ConfigError, match=r"teacher.mean: \[0.1\]/\[0.2\] differ from the normalization its "
                                          r"weights were trained with, \[0.5\]/\[0.25\]"):
        build_run_distiller(validate(digits_config(teacher=explicit)), digits_data())


def digits_data():
    return build_data({"name": "digits", "batch_size": 64, "val_fraction": 0.2})
