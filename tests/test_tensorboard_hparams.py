"""A finished run with train.tensorboard is one row of TensorBoard's hparams view, in its own event
directory: its resolved config as hyper-parameters, the numbers of summary.json as metrics."""

import json

import pytest

from kdlab.cli.main import main
from kdlab.engine.hparams import HPARAMS_SUFFIX, hparam_values, summary_metrics
from tests.helpers import write

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    SCALARS,
    TENSORS,
    EventAccumulator,
)
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.plugins.hparams import metadata  # noqa: E402


def read_run(tb_dir):
    events = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0, TENSORS: 0})
    events.Reload()
    return events


def session_starts(tb_dir):
    """How many hparams session-start records the run's event files hold, over all of them."""
    count = 0
    for path in sorted(tb_dir.iterdir()):
        for event in EventFileLoader(str(path)).Load():
            count += sum(value.tag == metadata.SESSION_START_INFO_TAG for value in event.summary.value)
    return count


def hparams_of(events):
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    return start.hparams, {info.name.tag for info in experiment.metric_infos}


@pytest.fixture
def tb_run(tmp_path, quick, capsys):
    tree = quick(name="tb", train={"tensorboard": True, "log_every": 1},
                 data={"mix": {"mixup_alpha": 0.2}})
    assert main(["train", write(tmp_path, tree), "--quiet"]) == 0
    capsys.readouterr()
    return tmp_path / "runs" / "tb"


def test_the_run_dir_holds_its_hparams_row_beside_its_curves(tb_run):
    summary = json.loads((tb_run / "summary.json").read_text())
    events = read_run(tb_run / "tb")
    hparams, metric_tags = hparams_of(events)
    assert hparams["method.name"].string_value == "ce"
    assert hparams["optim.lr"].number_value == pytest.approx(0.05)
    assert hparams["data.mix.mixup_alpha"].number_value == pytest.approx(0.2)
    assert hparams["train.top_k"].string_value == "[5]"
    assert hparams["teacher"].string_value == "null"
    assert "summary/test_selected/top1" in metric_tags and "summary/selected/value" in metric_tags
    scalars = events.Tags()["scalars"]
    assert "eval/student/top1" in scalars and "train/loss" in scalars
    final = events.Scalars("summary/test_selected/top1")
    assert len(final) == 1 and final[0].step == summary["steps"]
    assert final[0].value == pytest.approx(summary["test_selected"]["top1"], rel=1e-6)
    assert events.Scalars("summary/val_last/top5")[0].value == pytest.approx(summary["val_last"]["top5"])


def test_a_resumed_run_keeps_one_row_with_its_new_budget_and_results(tb_run, capsys):
    assert session_starts(tb_run / "tb") == 1
    assert main(["train", "--resume", str(tb_run), "train.steps=6", "--quiet"]) == 0
    summary = json.loads((tb_run / "summary.json").read_text())
    assert summary["steps"] == 6
    assert session_starts(tb_run / "tb") == 1
    assert len(list((tb_run / "tb").glob(f"*{HPARAMS_SUFFIX}"))) == 1
    events = read_run(tb_run / "tb")
    hparams, _ = hparams_of(events)
    assert hparams["train.steps"].number_value == 6
    final = events.Scalars("summary/test_selected/top1")
    assert [s.step for s in final] == [6]
    assert final[0].value == pytest.approx(summary["test_selected"]["top1"], rel=1e-6)


def test_a_run_without_tensorboard_writes_no_row(tmp_path, quick, capsys):
    assert main(["train", write(tmp_path, quick(name="plain")), "--quiet"]) == 0
    assert not (tmp_path / "runs" / "plain" / "tb").exists()


def test_config_flattens_to_dotted_scalars_and_summary_to_its_numbers():
    config = {"method": {"name": "kd", "params": {"temperature": 4.0}}, "train": {"top_k": [1, 5],
              "epochs": None, "compile": False}}
    assert hparam_values(config) == {"method.name": "kd", "method.params.temperature": 4.0,
                                     "train.top_k": "[1, 5]", "train.epochs": "null", "train.compile": False}
    summary = {"method": "kd", "steps": 6, "test_last": {"top1": 50.0, "per_class_top1": [1.0]},
               "early_stopping": {"stopped": True}}
    assert summary_metrics(summary) == {"summary/steps": 6.0, "summary/test_last/top1": 50.0}
