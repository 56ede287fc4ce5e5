import json

import pytest
import torch
from torch import nn

from kdlab.config import validate
from kdlab.core import checkpoint
from kdlab.core.checkpoint import load
from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.engine import Callback, Trainer
from kdlab.engine.averaging import LossValley, recalibrate_bn
from kdlab.engine.averaging.ema import EMAParams
from kdlab.engine.averaging.swad import SWAD, SWADParams
from kdlab.models import build_model
from kdlab.models.batchnorm import freeze_batchnorm
from kdlab.run import checkpoint_path, load_weights, train

STEPS = 12


class Recorder(Callback):
    """Keeps a float64 copy of the student's parameters after every step (the brute-force reference)."""

    name = "recorder"

    def __init__(self):
        self.iterates = {}
        self.epoch_ends = []

    def on_step_end(self, trainer):
        params = trainer.distiller.student.parameters()
        self.iterates[trainer.step] = [p.detach().double().clone() for p in params]

    def on_epoch_end(self, trainer):
        self.epoch_ends.append(trainer.step)


class Interrupt(Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, trainer):
        if trainer.step == self.at_step:
            raise KeyboardInterrupt


def mean_of(recorder, steps):
    steps = list(steps)
    count = len(recorder.iterates[1])
    return [torch.stack([recorder.iterates[s][i] for s in steps]).mean(0) for i in range(count)]


def averaged_params(run_dir):
    state = load(run_dir / "last.pt")["callbacks"]["averaging"]["model"]
    model = load(run_dir / "last.pt")["model"]
    names = [k.removeprefix("student.") for k in model if k.startswith("student.")]
    return [state[n].double() for n in names if n in state and state[n].is_floating_point()]


def assert_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def run(digits_config, name, strategy, params=None, callbacks=(), **sections):
    base = dict(data={"subset": 320, "batch_size": 32},
                student={"name": "cnn_tiny", "kwargs": {"batchnorm": False}},
                train={"epochs": None, "steps": STEPS, "eval_every": 4})
    base.update(sections)
    averaging = {"strategy": strategy, "params": params or {}}
    config = validate(digits_config(name=name, averaging=averaging, **base))
    return train(config, callbacks=callbacks)


@pytest.mark.parametrize(
    ("strategy", "params", "steps"),
    [
        ("wakd", {"start_fraction": 0.25}, range(3, STEPS + 1)),
        ("sma", {"start_step": 5}, range(5, STEPS + 1)),
        ("swa", {"start_fraction": 0.5, "cycle_steps": 2}, range(6, STEPS + 1, 2)),
    ],
)
def test_uniform_strategies_equal_the_mean_of_the_saved_iterates(digits_config, strategy, params, steps):
    recorder = Recorder()
    result = run(digits_config, strategy, strategy, params, callbacks=[recorder])
    assert_close(averaged_params(result.run_dir), mean_of(recorder, steps))
    info = result.summary["averaging"]
    assert (info["first_step"], info["last_step"], info["iterates"]) == (steps[0], steps[-1], len(steps))
    assert result.summary["model"] == "averaged"
    assert info["report"] == ("test_selected" if strategy == "sma" else "test_last")


def test_swa_per_epoch_averages_epoch_ends(digits_config):
    recorder = Recorder()
    result = run(digits_config, "swa-epoch", "swa", {"start_fraction": 0.0}, callbacks=[recorder])
    ends = sorted(set(recorder.epoch_ends))
    assert len(ends) >= 2
    assert_close(averaged_params(result.run_dir), mean_of(recorder, ends))


def test_ema_matches_the_recursion_and_warmup_gives_the_uniform_mean(digits_config):
    recorder = Recorder()
    result = run(digits_config, "ema", "ema", {"decay": 0.7, "start_step": 3}, callbacks=[recorder])
    expected = recorder.iterates[3]
    for step in range(4, STEPS + 1):
        expected = [0.7 * e + 0.3 * x for e, x in zip(expected, recorder.iterates[step], strict=True)]
    assert_close(averaged_params(result.run_dir), expected)

    recorder = Recorder()
    uniform = {"decay": 1.0, "warmup": True, "warmup_gamma": 1.0, "warmup_power": 1.0}
    result = run(digits_config, "ema-uniform", "ema", uniform, callbacks=[recorder])
    assert_close(averaged_params(result.run_dir), mean_of(recorder, range(1, STEPS + 1)))


def test_ema_decay_schedule():
    from kdlab.engine.averaging.ema import ema_decay

    params = EMAParams(decay=0.99, warmup=True, warmup_gamma=1.0, warmup_power=1.0)
    assert [ema_decay(params, k) for k in (1, 2, 3)] == [0.0, 0.5, pytest.approx(2 / 3)]
    assert ema_decay(params, 10_000) == 0.99


# ---------------------------------------------------------------------------- SWAD
def valley(losses, n_converge=3, n_tolerance=6, ratio=0.3):
    v = LossValley(n_converge, n_tolerance, ratio)
    included = []
    for loss in losses:
        included += v.push(loss)
    return v, included


def test_valley_starts_at_the_oldest_minimum_and_dies_after_the_tolerance_window():
    losses = [5.0, 4.0, 3.0, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]
    v, included = valley(losses)
    # segment 3 (loss 2.0) is the oldest minimum of 3,4,5 -> converged after segment 5
    assert v.converged_at == 3
    assert v.threshold == pytest.approx(1.3 * (2.0 + 2.1 + 2.2) / 3)
    # back-fill looks at most 3 segments before 3: losses 5, 4, 3 are all above tau = 2.73 -> none
    assert v.start == 3
    # segments 4..8 stay (their 6-window minimum <= tau); segment 9's window 9..14 is all 9.0 -> dead
    assert included == [3, 4, 5, 6, 7, 8]
    assert v.dead and v.end == 8
    assert len(v.losses) == 15 or v.dead  # death is detected once loss 14 is known
    assert valley(losses[:15])[0].dead and not valley(losses[:14])[0].dead


def test_valley_backfills_segments_under_the_threshold():
    v, included = valley([9.0, 2.6, 2.5, 2.0, 2.1, 2.2])
    assert v.converged_at == 3 and v.start == 1  # 2.6 and 2.5 <= 1.3 * 2.1; 9.0 is not
    assert included == [1, 2, 3]


def test_valley_flush_at_the_end_and_never_converged():
    v, included = valley([3.0, 2.0, 2.1, 2.2, 2.0, 2.6, 2.7])
    assert v.converged_at == 1 and included == [1]
    assert v.flush() == [2, 3, 4, 5, 6]
    v, included = valley([3.0, 2.0, 1.0, 0.5])
    assert v.converged_at is None and v.flush() == [] and included == []


class ScriptedSWAD(SWAD):
    def __init__(self, losses, **params):
        super().__init__(SWADParams(**params))
        self.script = list(losses)

    def validation_loss(self, trainer):
        return self.script.pop(0)


def digits_trainer(digits_config, callbacks, steps, run_dir=None):
    from kdlab.data import build_data
    from kdlab.methods import DistillContext, build_distiller
    from kdlab.models import build_model

    config = validate(digits_config(train={"epochs": None, "steps": steps, "eval_every": 1000},
                                    data={"subset": 320, "batch_size": 32}))
    torch.manual_seed(0)
    data = build_data("digits", None, batch_size=32, val_fraction=0.2, subset=320, device="cpu", seed=0)
    student = build_model("cnn_tiny", 10, in_channels=1, batchnorm=False)
    distiller = build_distiller(config.method, student, None,
                                DistillContext(10, (1, 8, 8), data.train.num_samples))
    return Trainer(distiller, data.train, data.val, train=config.train, device=torch.device("cpu"),
                   optim=config.optim, schedule=config.schedule, callbacks=callbacks, select_model="averaged",
                   run_dir=run_dir)


def test_swad_on_a_scripted_loss_sequence_averages_the_valley_and_stops_early(digits_config):
    losses = [5.0, 4.0, 3.0, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]
    swad = ScriptedSWAD(losses, nu=1)
    recorder = Recorder()
    trainer = digits_trainer(digits_config, [recorder, swad], steps=40)
    trainer.fit()
    # segment k is step k + 1; valley = segments 3..8 -> steps 4..9; dead once segment 14 closes (step 15)
    assert trainer.step == 15
    assert (swad.first_step, swad.last_step, swad.iterates) == (4, 9, 6)
    actual = [p.double() for p in trainer.eval_models()["averaged"].parameters()]
    assert_close(actual, mean_of(recorder, range(4, 10)))
    assert swad.describe()["stopped_early_at"] == 15


class CrashAtFitEnd(Callback):
    def on_fit_end(self, trainer):
        raise KeyboardInterrupt


def test_swad_resumed_after_its_early_stop_stays_stopped(digits_config, tmp_path):
    losses = [5.0, 4.0, 3.0, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]
    first = digits_trainer(digits_config, [ScriptedSWAD(losses, nu=1), CrashAtFitEnd()], steps=40,
                           run_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert load(tmp_path / "last.pt")["step"] == 15
    swad = ScriptedSWAD([], nu=1)  # any further validation would pop from an empty script
    resumed = digits_trainer(digits_config, [swad], steps=40, run_dir=tmp_path)
    resumed.fit(resume_from=tmp_path / "last.pt")
    assert resumed.step == 15 and swad.describe()["stopped_early_at"] == 15
    assert (swad.first_step, swad.last_step, swad.iterates) == (4, 9, 6)


def test_swad_without_convergence_returns_the_last_segment(digits_config):
    swad = ScriptedSWAD([5.0, 4.0, 3.0, 2.0, 1.0], nu=2)
    recorder = Recorder()
    trainer = digits_trainer(digits_config, [recorder, swad], steps=9)
    trainer.fit()
    assert swad.describe()["converged"] is False
    actual = [p.double() for p in trainer.eval_models()["averaged"].parameters()]
    assert_close(actual, mean_of(recorder, [9]))


def test_swad_run_averages_each_iterate_of_its_range_once(digits_config):
    recorder = Recorder()
    params = {"nu": 2, "n_converge": 1, "n_tolerance": 2, "tolerance_ratio": 10.0}
    result = run(digits_config, "swad", "swad", params, callbacks=[recorder])
    info = result.summary["averaging"]
    assert info["converged"] and len(info["segment_losses"]) == STEPS // 2
    steps = range(info["first_step"], info["last_step"] + 1)
    assert info["iterates"] == len(steps) and info["last_step"] == STEPS
    assert_close(averaged_params(result.run_dir), mean_of(recorder, steps))


# ---------------------------------------------------------------------------- resume
RESUME_PARAMS = {
    "swad": {"nu": 3, "n_converge": 2, "n_tolerance": 3},
    "wakd": {"start_fraction": 0.2},
    "sma": {"start_step": 3},
    "swa": {"start_fraction": 0.2, "cycle_steps": 2},
    "ema": {"decay": 0.8, "start_step": 2},
}


@pytest.mark.parametrize("strategy", sorted(RESUME_PARAMS))
def test_resume_restores_the_averaged_model_exactly(digits_config, strategy):
    params = RESUME_PARAMS[strategy]
    full = run(digits_config, "full", strategy, params)
    config = validate(digits_config(
        name="cut", averaging={"strategy": strategy, "params": params},
        data={"subset": 320, "batch_size": 32}, student={"name": "cnn_tiny", "kwargs": {"batchnorm": False}},
        train={"epochs": None, "steps": STEPS, "eval_every": 4}))
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(10)])
    cut_dir = full.run_dir.parent / "cut"
    assert load(cut_dir / "last.pt")["step"] == 8
    resumed = train(config, resume=cut_dir)
    a = load(full.run_dir / "last.pt")["callbacks"]["averaging"]["model"]
    b = load(cut_dir / "last.pt")["callbacks"]["averaging"]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["test_last"] == full.summary["test_last"]
    assert resumed.summary["averaging"]["iterates"] == full.summary["averaging"]["iterates"]
    best = load(cut_dir / "best.pt")
    assert best["best"]["model"] == "averaged"
    assert json.loads((cut_dir / "summary.json").read_text())["averaging"]["strategy"] == strategy


@pytest.mark.parametrize(("strategy", "params", "result_file"), [
    ("wakd", {"start_fraction": 0.25}, "averaged.pt"),
    ("sma", {"start_step": 5}, "best.pt"),
])
def test_a_run_directory_means_the_model_its_summary_reports(digits_config, strategy, params, result_file):
    result = run(digits_config, f"result-{strategy}", strategy, params)
    assert result.summary["checkpoint"] == result_file
    assert checkpoint_path(result.run_dir, "teacher.checkpoint") == result.run_dir / result_file
    model = build_model("cnn_tiny", 10, in_channels=1, batchnorm=False)
    load_weights(model, result.run_dir, "teacher.checkpoint")
    if result_file == "averaged.pt":
        expected = load(result.run_dir / "last.pt")["callbacks"]["averaging"]["model"]
    else:
        expected = checkpoint.student_state(load(result.run_dir / "best.pt")["model"])
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    online = checkpoint.student_state(load(result.run_dir / "last.pt")["model"])
    assert any(not torch.equal(v, online[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------- BatchNorm
def test_recalibration_recomputes_running_statistics_over_n_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3)).eval()
    model[0].running_mean.fill_(7.0)
    batches = [Batch(torch.randn(16, 3) * 2 + 1, torch.zeros(16, dtype=torch.long), torch.arange(16))
               for _ in range(5)]
    used = recalibrate_bn(model, iter(batches), num_batches=4)
    assert used == 4
    inputs = torch.cat([b.inputs for b in batches[:4]])
    torch.testing.assert_close(model[0].running_mean, inputs.mean(0))
    expected_var = torch.stack([b.inputs.var(0) for b in batches[:4]]).mean(0)
    torch.testing.assert_close(model[0].running_var, expected_var)
    assert not model[0].training and model[0].momentum == 0.1


def test_live_bn_average_is_recalibrated_and_frozen_bn_never_moves(digits_config):
    config = validate(digits_config(
        name="recal", student={"name": "cnn_tiny"}, data={"subset": 320, "batch_size": 32},
        train={"epochs": None, "steps": STEPS, "eval_every": 4},
        averaging={"strategy": "wakd", "buffers": "recalibrate", "bn_batches": 3}))
    result = train(config)
    state = load(result.run_dir / "last.pt")["callbacks"]["averaging"]["model"]
    assert int(state["stage1.0.bn.num_batches_tracked"]) == 3
    assert result.summary["averaging"]["buffers"] == "recalibrate"

    frozen = validate(digits_config(
        name="frozen", student={"name": "cnn_tiny", "freeze_bn": True},
        data={"subset": 320, "batch_size": 32},
        train={"epochs": None, "steps": 4, "eval_every": 4}, averaging={"strategy": "wakd"}))
    result = train(frozen)
    student = load(result.run_dir / "last.pt")["model"]
    assert torch.equal(student["student.stage1.0.bn.running_mean"], torch.zeros(8))
    assert int(student["student.stage1.0.bn.num_batches_tracked"]) == 0

    bad = validate(digits_config(
        name="bad", student={"name": "cnn_tiny", "freeze_bn": True}, train={"epochs": 1},
        averaging={"strategy": "wakd", "buffers": "recalibrate"}))
    with pytest.raises(ConfigError, match="freeze_bn"):
        train(bad)


def test_frozen_batchnorm_ignores_train_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    assert freeze_batchnorm(model) == 1
    model.train()
    assert model.training and not model[1].training
    model(torch.randn(4, 1, 5, 5))
    assert torch.equal(model[1].running_mean, torch.zeros(2))
    assert set(model.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                       "1.running_var", "1.num_batches_tracked"}


# ---------------------------------------------------------------------------- config
def test_bad_averaging_config_gets_one_line(digits_config):
    with pytest.raises(ConfigError, match="averaging.strategy: unknown averaging strategy 'swda'.*swad"):
        train(validate(digits_config(averaging={"strategy": "swda"})))
    with pytest.raises(ConfigError, match="averaging.params.start_frac"):
        train(validate(digits_config(averaging={"strategy": "wakd", "params": {"start_frac": 0.1}})))
    with pytest.raises(ConfigError, match="validation split"):
        train(validate(digits_config(data={"val_fraction": 0.0}, averaging={"strategy": "swad"})))


def test_shipped_averaging_configs_validate():
    from pathlib import Path

    from kdlab.config import load_config
    from kdlab.engine.averaging import build_averager

    paths = [p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml") if not p.name.startswith("_")]
    strategies = set()
    for path in paths:
        averaging = load_config(path).averaging
        if build_averager(averaging) is not None:
            strategies.add(averaging.strategy)
    assert {"swad", "sma", "wakd"} <= strategies
