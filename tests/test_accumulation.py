"""Gradient accumulation: k micro-batches per optimizer step train like one batch k times larger, the
schedule and every step count advance per optimizer step, the short last group of an epoch steps with its
own mean, and resume stays exact."""

import copy
import logging

import pytest
import torch
from torch import nn

from kdlab.config import validate
from kdlab.config.schema import MethodConfig, OptimConfig, ScheduleConfig, TrainConfig
from kdlab.core.checkpoint import load
from kdlab.data.batch import Batch
from kdlab.engine import Callback, Trainer
from kdlab.engine.logger import read_metrics
from kdlab.methods import DistillContext, build_distiller
from kdlab.run import train
from tests.helpers import one_line_error, write
from tests.test_train import Interrupt

NO_BN = {"name": "cnn_tiny", "kwargs": {"batchnorm": False}}


def config(digits_config, name, batch_size, every, **train_settings):
    """400 training samples (digits, ``data.subset``): 12 batches of 32 or 6 of 64 an epoch."""
    return validate(digits_config(name=name, student=NO_BN, data={"subset": 400, "batch_size": batch_size},
                                  schedule={"name": "multistep", "milestones": [1]},
                                  train={"accumulate_grad_batches": every, "log_every": 1, **train_settings}))


def run(digits_config, name, batch_size, every, **train_settings):
    return train(config(digits_config, name, batch_size, every, **train_settings))


def test_two_micro_batches_train_like_one_batch_of_twice_the_size(digits_config, caplog):
    big = run(digits_config, "big", 64, 1, epochs=2)
    with caplog.at_level(logging.INFO, logger="kdlab"):
        accumulated = run(digits_config, "accumulated", 32, 2, epochs=2)
    banner = "12 steps (2 epochs) of batch 64 (2 x 32 accumulated)"
    assert any(banner in r.getMessage() for r in caplog.records)
    small = run(digits_config, "small", 32, 1, epochs=2)
    assert big.summary["steps"] == accumulated.summary["steps"] == 12
    assert small.summary["steps"] == 24
    state = load(accumulated.run_dir / "last.pt")
    reference = load(big.run_dir / "last.pt")
    for key, value in reference["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=1e-5, msg=key)
    small_weights = load(small.run_dir / "last.pt")["model"]
    assert max((small_weights[k] - v).abs().max() for k, v in reference["model"].items()) > 1e-3
    assert state["images_seen"] == reference["images_seen"] == 768
    assert state["scheduler"]["last_epoch"] == 12
    rates = [r["lr"] for r in read_metrics(accumulated.run_dir) if r["kind"] == "train"]
    # milestone epoch 1 starts at optimizer step 7; the rate logged after step s is that of step s + 1
    assert rates == pytest.approx([0.05] * 5 + [0.005] * 7)


class StepRecorder(Callback):
    def __init__(self) -> None:
        self.steps = []

    def on_step_end(self, trainer) -> None:
        self.steps.append(trainer.step)


class Batches:
    """A fixed list of batches, the same every epoch."""

    def __init__(self, batches):
        self.batches = batches
        self.num_samples = sum(b.targets.numel() for b in batches)

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.batches)


def test_the_short_last_group_of_an_epoch_steps_with_its_own_mean():
    torch.manual_seed(0)
    batches = [Batch(torch.randn(4, 6), torch.randint(0, 3, (4,)), torch.arange(4 * i, 4 * i + 4))
               for i in range(4)]
    student = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    reference = copy.deepcopy(student)
    distiller = build_distiller(MethodConfig(name="ce"), student, None, DistillContext(3, (1, 1, 6), 16))
    optim = OptimConfig(lr=0.5, momentum=0.9, weight_decay=0.0)
    trainer = Trainer(distiller, Batches(batches), None, device=torch.device("cpu"), optim=optim,
                      schedule=ScheduleConfig(name="constant"), callbacks=[recorder := StepRecorder()],
                      train=TrainConfig(epochs=2, accumulate_grad_batches=3, precision="fp32",
                                        channels_last=False, progress=False))
    assert trainer.steps_per_epoch == 2 and trainer.total_steps == 4
    trainer.fit()
    assert recorder.steps == [1, 2, 3, 4]  # per-step callbacks (averaging, ...) run once per optimizer step

    sgd = torch.optim.SGD(reference.parameters(), lr=0.5, momentum=0.9)
    for _ in range(2):
        for group in (batches[:3], batches[3:]):  # groups of 3 and 1 batches
            sgd.zero_grad()
            inputs = torch.cat([b.inputs for b in group])
            nn.functional.cross_entropy(reference(inputs), torch.cat([b.targets for b in group])).backward()
            sgd.step()
    for trained, expected in zip(student.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(trained, expected, rtol=0, atol=1e-6)


def test_an_interrupted_accumulating_run_resumes_bit_for_bit(digits_config):
    settings = dict(epochs=None, steps=13, eval_every=2)  # groups of 5, 5 and 2 batches: 3 steps an epoch
    full = run(digits_config, "full", 32, 5, **settings)
    cut_config = config(digits_config, "cut", 32, 5, **settings)
    with pytest.raises(KeyboardInterrupt):
        train(cut_config, callbacks=[Interrupt(11)])
    cut = full.run_dir.parent / "cut"
    assert load(cut / "last.pt")["step"] == 10  # mid-epoch: step 1 of epoch 3
    train(cut_config, resume=cut)
    done, expected = load(cut / "last.pt"), load(full.run_dir / "last.pt")
    assert done["step"] == expected["step"] == 13
    for key, value in expected["model"].items():
        assert torch.equal(done["model"][key], value), key


@pytest.mark.parametrize("value", [0, -1])
def test_a_bad_accumulation_count_is_one_line(tmp_path, capsys, quick, value):
    err = one_line_error(capsys, ["train", write(tmp_path, quick(train={"accumulate_grad_batches": value}))])
    assert "train.accumulate_grad_batches" in err


def test_a_resume_cannot_change_how_many_batches_make_a_step(capsys, finished_run):
    err = one_line_error(capsys, ["train", "--resume", str(finished_run), "train.accumulate_grad_batches=2"])
    assert err.startswith("kdlab: error: train.accumulate_grad_batches: a resumed run cannot change it")
