import json

import pytest
import yaml

from kdlab.cli.main import main
from kdlab.core.errors import ConfigError
from kdlab.protocols.dg import plan
from kdlab.report.domains import table
from tests.test_data import write_mnist


@pytest.fixture
def dg_files(tmp_path):
    return write_dg_files(tmp_path)


def write_dg_files(tmp_path):
    """A tiny colored-MNIST setup: a ce teacher config and a kd (+WAKD) student config."""
    write_mnist(tmp_path / "data" / "MNIST" / "raw", gz=False, n_train=60, n_test=12)
    recipe = {
        "data": {"name": "colored_mnist", "root": str(tmp_path / "data"), "batch_size": 4,
                 "val_fraction": 0.25},
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"steps": 3, "eval_every": 2, "precision": "fp32", "progress": False},
    }
    teacher = {**recipe, "student": {"name": "cnn_tiny"}, "method": {"name": "ce"}}
    student = {**recipe, "student": {"name": "cnn_tiny"}, "teacher": {"name": "cnn_tiny"},
               "method": {"name": "kd", "weights": {"ce": 0.0, "kd": 1.0}},
               "averaging": {"strategy": "wakd", "params": {"start_fraction": 0.3}}}
    paths = {}
    for name, tree in {"teacher": teacher, "kd_wakd": student}.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(tree))
    return tmp_path, paths


def test_dg_runs_every_target_with_a_teacher_per_target_and_aggregates(dg_files, capsys):
    tmp_path, paths = dg_files
    out = tmp_path / "dg"
    argv = ["dg", str(paths["kd_wakd"]), "--teacher", str(paths["teacher"]), "--out-dir", str(out), "--quiet",
            "--workers", "2"]
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [(x["config"], x["target_name"]) for x in lines] == [
        ("teacher", "+90%"), ("kd_wakd", "+90%"), ("teacher", "+80%"), ("kd_wakd", "+80%"),
        ("teacher", "-90%"), ("kd_wakd", "-90%")]
    for line in lines:
        run_dir = out / line["config"] / line["target_name"] / "seed0"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert line["format"] == 2 and line["protocol"] == "dg" and line["seed"] == 0
        assert line["test"] == summary[line["result"]["reported"]]
        assert line["domains"] == {line["target_name"]: line["test"]["top1"]}
        assert line["axes"] == {"config": line["config"], "target": line["target_name"], "seed": 0}
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert line["hparams"]["method.name"] == config["method"]["name"]
        assert line["cost"]["peak_mem_mb"] > 0 and line["cost"]["step_time_ms"] > 0
        assert config["data"]["options"]["test_domains"] == [line["target_name"]]
        if line["config"] == "kd_wakd":
            assert line["result"]["reported"] == "test_last" and line["averaging"] == "wakd"
            assert line["result"]["model"] == "averaged" and "online_test_last" in line["metrics"]
            assert config["teacher"]["checkpoint"] == str(out / "teacher" / line["target_name"] / "seed0")
        else:
            assert line["result"]["reported"] == "test_selected" and line["role"] == "teacher"
    table = (out / "results.md").read_text()
    assert "| Config | +90% | +80% | -90% | Avg |" in table and "| kd_wakd |" in table
    assert "| kd_wakd |" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    report = (out / "report" / "report.md").read_text()
    assert "| Config | +90% | +80% | -90% | Avg |" in report and "| student | kd |" in report

    stamp = (out / "kd_wakd" / "+80%" / "seed0" / "summary.json").stat().st_mtime_ns
    assert main(argv) == 0  # finished runs are reused
    assert (out / "kd_wakd" / "+80%" / "seed0" / "summary.json").stat().st_mtime_ns == stamp


def test_dg_refuses_a_teacher_that_saw_the_target_and_non_domain_data(dg_files, tmp_path):
    _, paths = dg_files
    with pytest.raises(ConfigError, match=r"teacher.checkpoint must name a teacher per target.*\{target\}"):
        plan([paths["kd_wakd"]], ["teacher.checkpoint=some/run"])
    _, runs = plan([paths["kd_wakd"]], ["teacher.checkpoint=t/{target}/s{seed}"], seeds=[3], targets=["-90%"])
    assert [r.config.teacher.checkpoint for r in runs] == ["t/-90%/s3"]
    assert runs[0].config.data.split_seed == 3 and runs[0].config.train.seed == 3
    with pytest.raises(ConfigError, match="not a domain dataset"):
        plan([paths["teacher"]], ["data.name=digits"])
    with pytest.raises(ConfigError, match="data.options.domain_size = None differs from the teacher"):
        plan([paths["kd_wakd"]], teacher=_with(paths["teacher"], tmp_path, domain_size=10))
    with pytest.raises(ConfigError, match="--targets"):
        plan([paths["teacher"]], targets=["blue"])


def _with(path, tmp_path, **options):
    tree = yaml.safe_load(path.read_text())
    tree["data"]["options"] = options
    out = tmp_path / "other_teacher.yaml"
    out.write_text(yaml.safe_dump(tree))
    return out


def test_a_fixed_split_shares_one_teacher_per_target_across_seeds(dg_files):
    _, paths = dg_files
    _, runs = plan([paths["kd_wakd"]], teacher=paths["teacher"], seeds=[0, 1, 2], split_seed=7, targets=[0])
    assert [r.label for r in runs] == ["teacher", "kd_wakd", "kd_wakd", "kd_wakd"]
    assert {r.config.data.split_seed for r in runs} == {7}
    assert [r.config.train.seed for r in runs] == [7, 0, 1, 2]
    assert {r.config.teacher.checkpoint for r in runs[1:]} == {str(runs[0].run_dir)}


def test_table_is_mean_and_domainbed_standard_error_over_seeds():
    lines = [{"config": "kd", "target_name": "0", "test": {"top1": v}} for v in (50.0, 60.0, 70.0)]
    lines += [{"config": "kd", "target_name": "15", "test": {"top1": v}} for v in (80.0, 90.0)]
    lines += [{"config": "ce", "target_name": "0", "test": {"top1": 40.0}}]
    rows = table(lines, ["0", "15"]).splitlines()
    # population std over seeds / sqrt(n): sqrt(200/3) / sqrt(3) = 4.71; 5 / sqrt(2) = 3.54
    assert rows[2] == "| kd | 60.0 ± 4.7 | 85.0 ± 3.5 | 72.5 |"
    assert rows[3] == "| ce | 40.0 | - | - |"  # one seed: no spread; no average over a missing target


def test_a_second_call_adds_its_runs_to_the_results(dg_files):
    tmp_path, paths = dg_files
    out, config = tmp_path / "dg", tmp_path / "ce.yaml"
    config.write_text(paths["teacher"].read_text())
    argv = ["dg", str(config), "--out-dir", str(out), "--targets", "+90%", "--quiet"]
    assert main([*argv, "--seeds", "0"]) == 0
    table = (out / "results.md").read_text()
    assert "| ce | " in table and " ± " not in table.splitlines()[-1]
    assert main([*argv, "--seeds", "1"]) == 0
    assert main([*argv, "--seeds", "1"]) == 0  # a repeated call lists its runs once
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [(x["config"], x["seed"]) for x in lines] == [("ce", 0), ("ce", 1)]
    table = (out / "results.md").read_text()
    assert "seeds [0, 1]" in table and " ± " in table.splitlines()[-1]
