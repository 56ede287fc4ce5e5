import pytest
import torch

from kdlab.config import ConfigError, validate
from kdlab.core.checkpoint import load
from kdlab.engine import Callback
from kdlab.engine.logger import read_metrics
from kdlab.run import train

from .test_train import Interrupt, assert_bitwise_equal


@pytest.fixture
def teacher_dir(digits_config):
    return train(validate(digits_config(name="teacher", student={"name": "cnn_small"},
                                        train={"epochs": 2}, data={"subset": 300}))).run_dir


def staged(digits_config, teacher_dir, stages, **extra):
    tree = digits_config(method={"name": "kd"}, teacher={"name": "cnn_small", "checkpoint": str(teacher_dir)},
                         data={"subset": 300}, **extra)
    tree["train"] = {k: v for k, v in tree["train"].items() if k != "epochs"}
    tree["stages"] = stages
    return validate(tree)


TWO_STAGES = [
    {"name": "warm", "epochs": 1, "weights": {"ce": 0.0, "kd": 1.0},
     "freeze": ["student.fc", "student.stage1"], "optim": {"lr": 0.01}},
    {"name": "main", "epochs": 2, "schedule": {"milestones": [1]}},
]


class Snapshot(Callback):
    """Student state at each stage start, to see what a stage changed."""

    def __init__(self):
        self.states = []

    def on_stage_start(self, trainer):
        self.states.append({k: v.clone() for k, v in trainer.distiller.student.state_dict().items()})

    def on_fit_end(self, trainer):
        self.on_stage_start(trainer)


def test_frozen_modules_keep_parameters_and_bn_statistics(digits_config, teacher_dir):
    snap = Snapshot()
    config = staged(digits_config, teacher_dir, TWO_STAGES, name="frozen")
    config.train.log_every = 1
    result = train(config, callbacks=[snap])
    before, after_warm, end = snap.states
    for key in before:
        changed = not torch.equal(before[key], after_warm[key])
        frozen = key.startswith(("fc.", "stage1."))
        assert changed != frozen or key.endswith("num_batches_tracked") and frozen, key
    assert not torch.equal(after_warm["fc.weight"], end["fc.weight"])
    records = [r for r in read_metrics(result.run_dir) if r["kind"] == "train"]
    assert {round(r["lr"], 6) for r in records if r["stage"] == "warm"} == {0.01}
    assert {round(r["lr"], 6) for r in records if r["stage"] == "main"} == {0.05, 0.005}
    assert result.summary["selected"]["step"] > result.summary["steps"] // 3


def test_train_only_trains_exactly_the_listed_modules(digits_config, teacher_dir):
    snap = Snapshot()
    stages = [{"name": "head", "epochs": 1, "train_only": ["student.fc"]}]
    train(staged(digits_config, teacher_dir, stages, name="head"), callbacks=[snap])
    before, end = snap.states
    changed = {k for k in before if not torch.equal(before[k], end[k])}
    assert changed == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("cut", [4, 5, 9])
def test_resume_mid_stage_and_at_the_boundary_is_exact(digits_config, teacher_dir, cut):
    full = train(staged(digits_config, teacher_dir, TWO_STAGES, name="full"))
    steps_per_epoch = full.summary["steps"] // 3
    assert steps_per_epoch == 4
    config = staged(digits_config, teacher_dir, TWO_STAGES, name="cut")
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(cut + 1)])
    run_dir = full.run_dir.parent / "cut"
    saved = load(run_dir / "last.pt")
    assert saved["step"] == cut // steps_per_epoch * steps_per_epoch
    train(config, resume=run_dir)
    assert_bitwise_equal(load(full.run_dir / "last.pt")["model"], load(run_dir / "last.pt")["model"])


def test_stage_mistakes_are_one_line(digits_config, teacher_dir):
    bad_path = [{"name": "a", "epochs": 1, "freeze": ["student.stage9"]}]
    with pytest.raises(ConfigError, match=r"stages.0: no module 'student.stage9'.*did you mean"):
        train(staged(digits_config, teacher_dir, bad_path))
    bad_term = [{"name": "a", "epochs": 1, "weights": {"hint": 1.0}}]
    with pytest.raises(ConfigError, match=r"stages.0.weights: unknown loss term 'hint'"):
        train(staged(digits_config, teacher_dir, bad_term))
    bad_optim = [{"name": "a", "epochs": 1, "optim": {"lrr": 1.0}}]
    with pytest.raises(ConfigError, match=r"stages.0.optim.lrr"):
        train(staged(digits_config, teacher_dir, bad_optim))
    tree = digits_config()
    tree["stages"] = [{"name": "a", "epochs": 1}]
    with pytest.raises(ConfigError, match="set epochs or steps per stage"):
        validate(tree)
