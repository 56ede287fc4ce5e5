from dataclasses import replace

import pytest
import torch

from kdlab.config import ConfigError, validate
from kdlab.core.checkpoint import load
from kdlab.data.batch import Batch
from kdlab.engine import Callback
from kdlab.engine.logger import read_metrics
from kdlab.methods import DistillContext, build_distiller
from kdlab.methods.stagewise import forward_until, mimic_loss, split_budget
from kdlab.models import TapPoint, build_model
from kdlab.models.partition import segment_paths
from kdlab.run import train

from .test_train import Interrupt, assert_bitwise_equal

STAGES = ("stage1.", "stage2.", "stage3.")


def digits_teacher():
    torch.manual_seed(1)
    return build_model("cnn_small", 10)


def stagewise_config(digits_config, epochs=8, **params):
    return validate(digits_config(method={"name": "stagewise", "params": params}, data={"subset": 128},
                                  teacher={"name": "cnn_small"}, schedule={"name": "cosine"},
                                  train={"epochs": epochs}))


class Snapshot(Callback):
    def __init__(self):
        self.states = []

    def on_stage_start(self, trainer):
        self.states.append({k: v.clone() for k, v in trainer.distiller.student.state_dict().items()})

    def on_fit_end(self, trainer):
        self.on_stage_start(trainer)


def test_segments_follow_the_forward_and_end_with_the_head():
    model = build_model("resnet8", 10)
    taps = [TapPoint(f"layer{i}") for i in (1, 2, 3)]
    assert segment_paths(model, taps, (3, 32, 32)) == [
        ["conv1", "bn1", "relu", "layer1"], ["layer2"], ["layer3"], ["avgpool", "fc"]]
    with pytest.raises(ValueError, match="out of order"):
        segment_paths(model, taps[::-1], (3, 32, 32))


def test_forward_until_stops_at_the_tap():
    model = build_model("cnn_tiny", 10)
    ran = []
    model.stage3.register_forward_pre_hook(lambda *_: ran.append("stage3"))
    x = torch.randn(2, 1, 8, 8)
    feature = forward_until(model, TapPoint("stage2"), x)
    assert ran == [] and torch.equal(feature, model.stage2(model.stage1(x)))
    preact = forward_until(model, TapPoint("stage1.0.relu", "input"), x)
    assert torch.equal(preact, model.stage1[0].bn(model.stage1[0].conv(x)))


def test_budget_split_and_mimic_loss():
    assert split_budget(240, 0.25, [1, 1, 1]) == ([60, 60, 60], 60)
    assert split_budget(240, 0.25, [1, 1, 1, 1]) == ([45, 45, 45, 45], 60)
    assert split_budget(10, 0.25, [1, 1, 1]) == ([3, 3, 2], 2)
    a, b = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    assert mimic_loss(a, b) == 1.0 and mimic_loss(a, b, "sum") == 12.0


def test_plan_from_the_budget(digits_config):
    config = stagewise_config(digits_config, epochs=8)
    context = DistillContext(10, (1, 8, 8), 256, "cnn_tiny", "cnn_small")
    distiller = build_distiller(config.method, build_model("cnn_tiny", 10), digits_teacher(), context)
    stages = distiller.default_stages(config)
    assert [(s.name, s.epochs) for s in stages] == [("stage1", 2), ("stage2", 2), ("stage3", 2), ("head", 2)]
    assert stages[1].train_only == ["student.stage2", "adapters.1"]
    assert stages[-1].train_only == ["student.avgpool", "student.fc"]
    assert stages[0].weights == {"mimic": 1.0, "ce": 0.0} and stages[-1].weights == {"mimic": 0.0, "ce": 1.0}
    joint = build_distiller(stagewise_config(digits_config, mode="joint").method, build_model("cnn_tiny", 10),
                            digits_teacher(), context).default_stages(config)
    assert [(s.name, s.epochs) for s in joint] == [("backbone", 6), ("head", 2)]
    backbone = replace(distiller.first_step(), weights={"mimic": 1.0, "ce": 0.0})
    x = torch.randn(4, 1, 8, 8)
    losses = distiller(Batch(x, torch.arange(4), torch.arange(4)), backbone).losses
    features = [forward_until(distiller.student, tap, x) for tap in distiller.student_taps.taps]
    with torch.no_grad():
        targets = [forward_until(distiller.teacher, tap, x) for tap in distiller.teacher_taps.taps]
    expected = sum(mimic_loss(a(f), t) for a, f, t in zip(distiller.adapters, features, targets, strict=True))
    assert set(losses) == {"mimic"} and torch.allclose(losses["mimic"], expected)
    never = stagewise_config(digits_config, adapter="never").method
    with pytest.raises(ConfigError, match="method.params.adapter: stage 1 maps differ"):
        build_distiller(never, build_model("cnn_tiny", 10), digits_teacher(), context)


def test_each_stage_trains_only_its_modules_and_the_head_leaves_the_backbone(digits_config):
    snap = Snapshot()
    config = stagewise_config(digits_config, epochs=4)
    config.train.log_every = 1
    result = train(config, teacher=digits_teacher(), callbacks=[snap])
    states = snap.states
    assert len(states) == 5
    for k, prefix in enumerate(STAGES):
        before, after = states[k], states[k + 1]
        for key in before:
            if key.endswith("num_batches_tracked"):
                continue
            changed = not torch.equal(before[key], after[key])
            assert changed == key.startswith(prefix), (prefix, key)
    head_changed = {k for k in states[3] if not torch.equal(states[3][k], states[4][k])}
    assert head_changed == {"fc.weight", "fc.bias"}
    records = read_metrics(result.run_dir)
    mimic = [r for r in records if r["kind"] == "train" and "mimic" in r]
    assert {r["stage"] for r in mimic} == {"stage1", "stage2", "stage3"}
    assert result.summary["selected"]["step"] > 3 * result.summary["steps"] // 4


def test_resume_mid_stage_is_exact(digits_config):
    full = train(stagewise_config(digits_config).model_copy(update={"name": "full"}),
                 teacher=digits_teacher())
    assert full.summary["steps"] == 16  # 2 steps per epoch; stages of 2 epochs: steps 0-4-8-12-16
    config = stagewise_config(digits_config).model_copy(update={"name": "cut"})
    with pytest.raises(KeyboardInterrupt):
        train(config, teacher=digits_teacher(), callbacks=[Interrupt(7)])
    run_dir = full.run_dir.parent / "cut"
    saved = load(run_dir / "last.pt")
    assert (saved["step"], saved["stage"]) == (6, 1)  # half-way through stage2
    train(config, resume=run_dir, teacher=digits_teacher())
    assert_bitwise_equal(load(full.run_dir / "last.pt")["model"], load(run_dir / "last.pt")["model"])
