import json

import yaml

from kdlab.cli.main import main


def write(tmp_path, tree):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_list_methods_and_models(capsys):
    assert main(["list", "methods"]) == 0
    assert {"ce", "kd"} <= set(capsys.readouterr().out.split())
    assert main(["list", "models"]) == 0
    assert "resnet8x4" in capsys.readouterr().out.split()
    assert main(["list", "datasets"]) == 0
    assert "cifar100" in capsys.readouterr().out.split()


def test_bad_key_is_one_line_with_exit_code_2(tmp_path, capsys, digits_config):
    path = write(tmp_path, digits_config(optim={"lrr": 0.1}))
    assert main(["train", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'optim.lrr'" in err and "run.yaml" in err


def test_unknown_model_and_method_are_one_line(tmp_path, capsys, digits_config):
    assert main(["train", write(tmp_path, digits_config(student={"name": "resnet8x5"}))]) == 2
    err = capsys.readouterr().err
    assert "student.name" in err and "resnet8x4" in err and err.count("\n") == 1
    assert main(["train", write(tmp_path, digits_config(method={"name": "kdd"}))]) == 2
    assert "did you mean 'kd'" in capsys.readouterr().err


def test_train_resume_and_eval(tmp_path, capsys, digits_config):
    path = write(tmp_path, digits_config(name="cli", train={"epochs": 2}))
    assert main(["train", path, "train.epochs=1", "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "cli"
    out = json.loads(capsys.readouterr().out)
    assert out["run_dir"] == str(run_dir)
    assert main(["train", "--resume", str(run_dir), "train.epochs=2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--split", "val", "--split", "test"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["val"]["n"] > 0 and results["test"]["top1"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["selected"]["step"] == results["step"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 2
    assert main(["eval", str(run_dir), "student.name=cnn_small"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "best.pt does not fit SmallCNN" in err


def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err
