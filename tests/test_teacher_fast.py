"""The teacher's fast path: folded BatchNorm, weights cast once, channels_last; the same logits and tapped
features as the plain eval-mode teacher, the same teacher cache, the same training losses."""

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlab.config.load import ConfigError, validate
from kdlab.engine.logger import read_metrics
from kdlab.ensemble import TeacherEnsemble
from kdlab.methods.base import FrozenTeacher
from kdlab.models import FeatureTaps, ModelError, build_model, stage_preset
from kdlab.models.fast import FastPlan, describe, prepare_frozen
from kdlab.models.fold import fold_batchnorm, is_folded
from kdlab.run import train
from kdlab.teacher_cache import fill_teacher_cache
from kdlab.teacher_cache.fingerprint import module_sha256

FAMILIES = ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2", "resnet8x4",
            "torchvision:resnet18", "torchvision:mobilenet_v3_small"]
SHAPE = (3, 16, 16)
#: bf16 keeps 8 significant bits: 2^-8 = 0.4% per rounding; a few roundings through a small net
BF16_TOLERANCE = 3e-2


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_statistics(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random BN running statistics and affine parameters, so that folding changes every weight."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval().requires_grad_(False)


def preset_taps(name: str, model: nn.Module) -> list:
    preset = stage_preset(name, model)
    return [*preset.stages, *(preset.preact_stages or ()), *([preset.stem] if preset.stem else ()),
            preset.embedding]


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


@pytest.mark.parametrize("name", FAMILIES)
def test_fast_teacher_gives_the_plain_teachers_logits_and_features(name):
    torch.manual_seed(0)
    plain = random_statistics(build_model(name, 10))
    taps = preset_taps(name, plain)
    fast32, fast16 = copy.deepcopy(plain), copy.deepcopy(plain)
    plain_taps, taps32, taps16 = (FeatureTaps(m, taps) for m in (plain, fast32, fast16))
    report = prepare_frozen(fast32, FastPlan(channels_last=True), SHAPE)
    prepare_frozen(fast16, FastPlan(dtype=torch.bfloat16), SHAPE)
    assert report.untraceable is None and report.folded and not report.kept
    modules = dict(fast32.named_modules())
    assert all(is_folded(modules[conv]) and is_folded(modules[bn]) for conv, bn in report.folded)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        expected, expected_features = plain(x), plain_taps.features
        logits = fast32(x)
        assert relative(logits, expected) < 1e-5
        for feature, reference in zip(taps32.features, expected_features, strict=True):
            assert relative(feature, reference) < 1e-5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_logits, autocast_features = plain(x), plain_taps.features
            logits16 = fast16(x)
    assert logits16.dtype == autocast_logits.dtype
    assert relative(logits16, expected) < BF16_TOLERANCE
    features16 = taps16.features
    for feature, autocast, reference in zip(features16, autocast_features, expected_features, strict=True):
        assert feature.dtype == autocast.dtype
        assert relative(feature, reference) < BF16_TOLERANCE
    conv = next(m for m in fast16.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.dtype == torch.bfloat16


def test_taps_of_a_pre_batchnorm_output_keep_that_pair_unfolded():
    plain = random_statistics(build_model("resnet8", 10))
    taps = ["layer1.0.bn1:input", "layer2.0.conv2", "layer2.0.bn2", "layer3"]
    fast = copy.deepcopy(plain)
    plain_taps, fast_taps = FeatureTaps(plain, taps), FeatureTaps(fast, taps)
    report = fold_batchnorm(fast)
    assert sorted(report.kept) == [("layer1.0.conv1", "layer1.0.bn1"), ("layer2.0.conv2", "layer2.0.bn2")]
    assert len(report.folded) == 7
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert relative(fast(x), plain(x)) < 1e-5
    for feature, reference in zip(fast_taps.features, plain_taps.features, strict=True):
        assert relative(feature, reference) < 1e-5
    with pytest.raises(ModelError, match="folded"):
        FeatureTaps(fast, ["layer3.0.bn1:input"])
    with pytest.raises(ModelError, match="folded"):
        FeatureTaps(fast, ["layer3.0.conv1"])
    FeatureTaps(fast, ["layer3.0.bn1", "layer3.0.conv1:input"]).close()


class ValueBranch(nn.Module):
    """A forward that branches on a tensor's value: neither torch.fx nor torch.export can trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 10)

    def forward(self, x):
        x = self.bn(self.conv(x))
        if x.mean() > 0:
            x = x.relu()
        return self.fc(x.mean((2, 3)))


def test_a_model_that_cannot_be_traced_is_left_unchanged_and_named_in_the_log():
    model = random_statistics(ValueBranch())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = FastPlan()
    report = prepare_frozen(model, plan, SHAPE)
    assert report.untraceable and not report.folded
    assert type(model.bn) is nn.BatchNorm2d
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    [line] = describe("teacher (ValueBranch)", plan, report)
    assert line.startswith("teacher (ValueBranch): BatchNorm not folded")


def test_every_member_of_a_stacked_ensemble_is_folded_and_still_stacked():
    members = [random_statistics(build_model("resnet8", 10), seed) for seed in (1, 2)]
    plain = TeacherEnsemble([copy.deepcopy(m) for m in members], batched=True)
    fast = TeacherEnsemble(members, batched=True)
    lines = FrozenTeacher(fast).speed_up(FastPlan(), SHAPE)
    assert fast.stackable and len(lines) == 2 and all("9 BatchNorm layers folded" in line for line in lines)
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert relative(fast.member_logits(x), plain.member_logits(x)) < 1e-5


def test_the_fast_path_is_configured_per_teacher_in_one_line_errors(digits_config):
    tree = digits_config(teacher={"name": "cnn_small", "fast": {"fold_bn": False}})
    assert validate(tree).teacher_fast().cast and not validate(tree).teacher_fast().fold_bn
    off = validate(digits_config(teacher={"name": "cnn_small", "fast": False})).teacher_fast()
    assert not (off.fold_bn or off.cast or off.channels_last or off.compile)
    with pytest.raises(ConfigError, match=r"teacher\.fast\.fold'.*fold_bn"):
        validate(digits_config(teacher={"name": "cnn_small", "fast": {"fold": True}}))
    with pytest.raises(ConfigError, match="student.fast"):
        validate(digits_config(student={"name": "cnn_tiny", "fast": True}))


@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(random_statistics(build_model("resnet8", 10, in_channels=1)).state_dict(), path)
    return str(path)


def test_a_cache_filled_by_the_fast_teacher_has_the_plain_teachers_fingerprint(digits_config, teacher_file,
                                                                             tmp_path, caplog):
    def config(fast, name):
        return validate(digits_config(
            data={"augment": "standard", "val_fraction": 0.2, "subset": 64}, method={"name": "kd"},
            teacher={"name": "resnet8", "checkpoint": teacher_file, "fast": fast},
            teacher_cache={"path": str(tmp_path / name), "epochs": 1, "batch_size": 32}, train={"epochs": 1}))

    metas = {}
    for fast in (True, False):
        with caplog.at_level(logging.INFO, logger="kdlab"):
            root = fill_teacher_cache(config(fast, f"cache-{fast}"))
        assert ("9 BatchNorm layers folded" in caplog.text) == fast
        caplog.clear()
        metas[fast] = json.loads((Path(root) / "meta.json").read_text())
    teacher = build_model("resnet8", 10, in_channels=1)
    teacher.load_state_dict(torch.load(teacher_file, weights_only=True))
    assert metas[True]["teacher_sha256"] == metas[False]["teacher_sha256"] == module_sha256(teacher)
    train(config(False, "cache-True"), write=False)


@pytest.mark.parametrize("method", ["kd", "at"])
def test_training_with_the_fast_teacher_gives_the_plain_teachers_losses(method, digits_config, teacher_file,
                                                                        caplog):
    losses = {}
    for fast in (False, True):
        tree = digits_config(method={"name": method}, teacher={"name": "resnet8", "checkpoint": teacher_file,
                                                               "fast": fast},
                             train={"steps": 3, "log_every": 1, "epochs": None}, name=f"{method}-{fast}")
        with caplog.at_level(logging.INFO, logger="kdlab"):
            run = train(validate(tree))
        losses[fast] = [r["loss"] for r in read_metrics(run.run_dir) if r["kind"] == "train"]
    assert "teacher (CifarResNet): 9 BatchNorm layers folded" in caplog.text
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
