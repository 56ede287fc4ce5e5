"""Early stopping on a validation metric, with its state kept across a resume."""

import pytest

from kdlab.config import validate
from kdlab.config.schema import EarlyStoppingConfig
from kdlab.core.errors import ConfigError
from kdlab.engine.early_stopping import EarlyStopping, improves
from kdlab.run import train


class FakeTrainer:
    def __init__(self):
        self.step, self.should_stop, self.stage_index, self.stages = 0, False, 0, [None]
        self.selection = type("Selection", (), {"model": "student"})()


def test_the_run_stops_after_patience_evaluations_without_improvement():
    stopper, trainer = EarlyStopping(EarlyStoppingConfig(patience=2, min_delta=0.5), "top1"), FakeTrainer()
    for step, top1 in enumerate([50.0, 60.0, 60.4, 61.0, 60.9, 61.3], start=1):
        trainer.step = step
        stopper.on_evaluate(trainer, {"student": {"top1": top1}})
        assert trainer.should_stop == (step == 6)
    assert stopper.stopped_at == 6 and stopper.best == 61.0
    assert improves("nll", 0.4, 0.5, 0.05) and not improves("nll", 0.48, 0.5, 0.05)


def test_a_resumed_run_that_stopped_early_stays_stopped():
    stopper = EarlyStopping(EarlyStoppingConfig(patience=1), "top1")
    stopper.load_state_dict({"best": 70.0, "waited": 1, "stopped_at": 12})
    trainer = FakeTrainer()
    stopper.on_fit_start(trainer)
    assert trainer.should_stop


def test_early_stopping_ends_a_real_run_and_is_in_its_summary(digits_config):
    config = validate(digits_config(name="stop", optim={"lr": 1e-6},
                                    train={"epochs": 8, "early_stopping": {"patience": 1, "min_delta": 50}}))
    result = train(config)
    info = result.summary["early_stopping"]
    assert info["stopped_at_step"] == result.summary["steps"] and result.summary["epochs"] == 2.0
    assert info["patience"] == 1 and info["metric"] == "top1"


def test_early_stopping_needs_a_validation_split(digits_config):
    config = validate(digits_config(data={"val_fraction": 0.0}, train={"early_stopping": {"patience": 2}}))
    with pytest.raises(ConfigError, match="train.early_stopping: needs a validation split"):
        train(config)
