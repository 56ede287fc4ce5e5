"""CLI habits: overrides anywhere, errors that name their source, --version, list and demo --help."""

import json

import pytest

from kdlab import __version__
from kdlab.cli.main import main
from tests.helpers import one_line_error, write


def test_overrides_may_follow_flags(tmp_path, capsys, quick):
    path = write(tmp_path, quick(name="mixed"))
    assert main(["train", path, "--quiet", "train.steps=2", "train.eval_every=2"]) == 0
    run_dir = json.loads(capsys.readouterr().out)["run_dir"]
    assert main(["eval", run_dir, "--split", "val", "--split", "test", "data.eval_batch_size=32"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["step"] == 2 and {"val", "test"} <= set(results)


def test_a_parse_error_prints_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "RUN", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: kdlab eval") and "unrecognized arguments: --bogus" in err


def test_an_override_typo_names_the_command_line(tmp_path, capsys, quick):
    err = one_line_error(capsys, ["train", write(tmp_path, quick()), "optim.lrr=0.1"])
    assert "command line override 'optim.lrr=0.1'" in err and "run.yaml" not in err
    err = one_line_error(capsys, ["train", write(tmp_path, quick(optim={"lrr": 0.1}))])
    assert "run.yaml: unknown key 'optim.lrr'" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"kdlab {__version__}"


def test_demo_help_describes_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "digits" in out and "seed of every run" in out and "epochs of each" in out


def test_list_describes_each_entry(capsys):
    assert main(["list", "methods"]) == 0
    lines = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert "temperature" in lines["kd"] and all(lines.values())
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("resnet8x4") and "1.23M params" in line for line in out.splitlines())
    assert main(["list", "datasets"]) == 0
    lines = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert "CIFAR-100" in lines["cifar100"] and "PACS" in lines["pacs"]


def test_resume_with_another_method_names_the_fixed_key(capsys, finished_run):
    err = one_line_error(capsys, ["train", "--resume", str(finished_run), "method.name=kd",
                                  "method.params.temperature=2"])
    assert "method.name: a resumed run cannot change it" in err
