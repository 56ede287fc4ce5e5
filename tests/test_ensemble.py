"""Ensemble distillation: BatchEnsemble conversion and merge, stacked teachers, the diversifying
perturbation, the ensemble methods end to end, and export."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.config import validate
from kdlab.config.schema import MethodConfig
from kdlab.core.checkpoint import load
from kdlab.core.errors import ConfigError
from kdlab.core.runtime import Runtime
from kdlab.data import Batch, build_data
from kdlab.engine.metrics import ClassificationMeter
from kdlab.ensemble import (
    BatchEnsemble,
    PixelRange,
    TeacherEnsemble,
    batchensemble_layers,
    divergence_objective,
    ensemble_log_probs,
    merge_batchensemble,
    ods_objective,
    perturb,
    tile,
    to_batchensemble,
)
from kdlab.methods import DistillContext, build_distiller
from kdlab.methods.ensemble_kd import ensemble_kd_loss
from kdlab.models import build_model
from kdlab.models.small_cnn import SmallCNN
from kdlab.run import train


def grouped_net(num_classes: int = 5) -> nn.Module:
    """Grouped and depthwise convolutions with biases, BN, and a classifier."""
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU(),  # depthwise
        nn.Conv2d(6, 4, 1, groups=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes),
    )


# (model factory, input shape): BN + conv shortcuts + fc bias; grouped convs with biases; conv biases.
MODELS = [
    pytest.param(lambda: build_model("wrn_16_1", num_classes=5), (3, 8, 8), id="wrn_16_1"),
    pytest.param(grouped_net, (2, 6, 6), id="grouped"),
    pytest.param(lambda: build_model("cnn_tiny", num_classes=5, batchnorm=False), (1, 8, 8), id="cnn_tiny"),
]


def randomize_factors(model: nn.Module, scale: float = 0.2) -> None:
    with torch.no_grad():
        for layer in batchensemble_layers(model).values():
            layer.r_offset.normal_(0, scale)
            layer.s_offset.normal_(0, scale)


def settle_batchnorm(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Give BN layers non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, *shape) * 2 + 0.5)
    model.eval()


# ---------------------------------------------------------------- BatchEnsemble conversion and merge
@pytest.mark.parametrize(("factory", "shape"), MODELS)
def test_conversion_round_trip(factory, shape):
    torch.manual_seed(0)
    plain = factory()
    settle_batchnorm(plain, shape)
    original = copy.deepcopy(plain)
    ensemble = BatchEnsemble(plain, 3).eval()
    x = torch.randn(4, *shape)
    with torch.no_grad():
        members = ensemble.member_logits(x)
        expected = original(x)
    assert members.shape == (3, 4, 5)
    for i in range(3):  # factors start at one: every member is the original network
        torch.testing.assert_close(members[i], expected, rtol=0, atol=1e-6)
    state = ensemble.net.state_dict()
    layers = batchensemble_layers(ensemble.net)
    offsets = {f"{p}.{f}" for p in layers for f in ("r_offset", "s_offset")}
    assert set(original.state_dict()) | offsets == set(state)
    n_convs = sum(type(m) in (nn.Conv2d, nn.Linear) for m in original.modules())
    assert len(layers) == n_convs > 0
    merged = merge_batchensemble(ensemble)
    assert type(merged) is type(original)
    assert not batchensemble_layers(merged)
    for key, value in original.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize(("factory", "shape"), MODELS)
def test_merged_model_equals_batchensemble_with_averaged_factors(factory, shape):
    torch.manual_seed(1)
    plain = factory()
    settle_batchnorm(plain, shape)
    ensemble = BatchEnsemble(plain, 4).eval()
    randomize_factors(ensemble)
    averaged = copy.deepcopy(ensemble)
    with torch.no_grad():
        for layer in batchensemble_layers(averaged).values():
            for offset in (layer.r_offset, layer.s_offset):
                offset.copy_(offset.mean(dim=0, keepdim=True).expand_as(offset))
    merged = merge_batchensemble(ensemble).eval()
    x = torch.randn(6, *shape)
    with torch.no_grad():
        reference = averaged.member_logits(x)
        got = merged(x)
        members = ensemble.member_logits(x)
    for i in range(4):
        torch.testing.assert_close(got, reference[i], rtol=1e-4, atol=1e-5)
    assert (members[0] - members[1]).abs().max() > 1e-3  # the members really differ


def test_merge_scales_the_bias_inside_the_output_factor():
    torch.manual_seed(2)
    linear = nn.Linear(6, 3)
    with torch.no_grad():
        linear.bias.uniform_(1, 2)
    ensemble = to_batchensemble(copy.deepcopy(linear), 2)
    randomize_factors(nn.ModuleList([ensemble]), 0.3)
    x = torch.randn(5, 6)
    r_bar, s_bar = ensemble.mean_factors()
    with torch.no_grad():
        expected = s_bar * (F.linear(r_bar * x, linear.weight) + linear.bias)
        unscaled_bias = s_bar * F.linear(r_bar * x, linear.weight) + linear.bias
        got = merge_batchensemble(ensemble)(x)
    torch.testing.assert_close(got, expected)
    assert (got - unscaled_bias).abs().max() > 1e-2


def test_identical_factors_merge_to_that_member_exactly():
    torch.manual_seed(3)
    ensemble = BatchEnsemble(build_model("cnn_tiny", num_classes=4, batchnorm=False), 3).eval()
    randomize_factors(ensemble)
    with torch.no_grad():
        for layer in batchensemble_layers(ensemble).values():
            layer.r_offset.copy_(layer.r_offset[:1].expand_as(layer.r_offset))
            layer.s_offset.copy_(layer.s_offset[:1].expand_as(layer.s_offset))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(merge_batchensemble(ensemble)(x), ensemble.member_logits(x)[0])


def test_merged_state_dict_loads_into_the_plain_class(tmp_path):
    torch.manual_seed(4)
    ensemble = BatchEnsemble(build_model("cnn_tiny", num_classes=10), 2).eval()
    randomize_factors(ensemble)
    merged = merge_batchensemble(ensemble).eval()
    torch.save(merged.state_dict(), tmp_path / "plain.pt")
    fresh = SmallCNN((8, 16, 32), 1, num_classes=10).eval()
    fresh.load_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), merged(x), rtol=0, atol=0)
    again = merge_batchensemble(ensemble, out=merged)  # the in-place refresh used at every evaluation
    assert again is merged


def test_factor_gradients_are_scaled_by_members_and_decay_pulls_toward_one():
    torch.manual_seed(5)
    base = nn.Linear(4, 3)
    grads = {}
    for scale in (1.0, None):
        layer = to_batchensemble(copy.deepcopy(base), 4, grad_scale=scale)
        torch.manual_seed(6)
        randomize_factors(nn.ModuleList([layer]))
        layer(torch.randn(8, 4)).square().sum().backward()
        grads[scale] = (layer.r_offset.grad.clone(), layer.s_offset.grad.clone(), layer.weight.grad.clone())
    torch.testing.assert_close(grads[None][0], 4 * grads[1.0][0])
    torch.testing.assert_close(grads[None][1], 4 * grads[1.0][1])
    torch.testing.assert_close(grads[None][2], grads[1.0][2])  # shared weight: unscaled

    layer = to_batchensemble(copy.deepcopy(base), 2)
    randomize_factors(nn.ModuleList([layer]), 0.5)
    r_before = 1 + layer.r_offset.detach().clone()
    optimizer = torch.optim.SGD([layer.r_offset], lr=0.1, weight_decay=0.5)
    (0 * layer(torch.randn(2, 4)).sum()).backward()
    optimizer.step()
    r_after = 1 + layer.r_offset.detach()
    torch.testing.assert_close(r_after - 1, (r_before - 1) * (1 - 0.1 * 0.5))


def test_batch_must_be_a_multiple_of_members():
    layer = to_batchensemble(nn.Conv2d(2, 3, 3), 4)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        layer(torch.randn(6, 2, 5, 5))
    assert tile(torch.arange(3.0)[:, None], 2).flatten().tolist() == [0, 1, 2, 0, 1, 2]


# ---------------------------------------------------------------- stacked teachers
def teachers(n: int = 3, name: str = "cnn_tiny") -> list[nn.Module]:
    models = []
    for i in range(n):
        torch.manual_seed(10 + i)
        model = build_model(name, num_classes=10)
        settle_batchnorm(model, (1, 8, 8))
        models.append(model)
    return models


def test_vmap_ensemble_equals_the_loop_in_values_and_input_gradients():
    models = teachers()
    batched = TeacherEnsemble(models, batched=True)
    looped = TeacherEnsemble(models, batched=False)
    assert batched.stackable
    x = torch.randn(5, 1, 8, 8, requires_grad=True)
    a, b = batched.member_logits(x), looped.member_logits(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[2], models[2](x))
    (ga,) = torch.autograd.grad(a.square().sum(), x)
    (gb,) = torch.autograd.grad(b.square().sum(), x)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
    expected = torch.log(torch.stack([F.softmax(m(x), dim=1) for m in models]).mean(0))
    torch.testing.assert_close(batched(x), expected, rtol=1e-5, atol=1e-6)
    batched.double()  # the stacked copy follows the members
    assert batched.member_logits(x.double()).dtype == torch.float64
    batched.train()
    assert not any(m.training for m in batched.modules())
    assert not any(p.requires_grad for p in batched.parameters())


def test_mixed_architectures_fall_back_to_the_loop():
    mixed = [*teachers(2), build_model("cnn_small", num_classes=10)]
    ensemble = TeacherEnsemble(mixed)
    assert not ensemble.stackable
    assert ensemble.member_logits(torch.randn(2, 1, 8, 8)).shape == (3, 2, 10)
    with pytest.raises(ValueError, match="one architecture"):
        TeacherEnsemble(mixed, batched=True)


def test_meter_reports_agreement_and_kl_to_a_reference():
    torch.manual_seed(7)
    logits, reference = torch.randn(50, 4), torch.randn(50, 4)
    targets = torch.randint(4, (50,))
    meter = ClassificationMeter()
    meter.update(logits, targets, reference)
    result = meter.compute()
    agree = (logits.argmax(1) == reference.argmax(1)).double().mean() * 100
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True,
                  reduction="batchmean")
    assert result["agreement"] == pytest.approx(float(agree))
    assert result["kl"] == pytest.approx(float(kl), rel=1e-5)
    same = ClassificationMeter()
    same.update(reference, targets, reference)
    assert same.compute()["agreement"] == 100.0 and same.compute()["kl"] == pytest.approx(0.0, abs=1e-7)
    plain = ClassificationMeter()
    plain.update(logits, targets)
    assert "agreement" not in plain.compute()


def test_meter_nll_and_ece_by_hand():
    """ECE = sum over bins of |sum(confidence) - sum(correct)| / N; NLL = mean -log p(true class)."""
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    targets = torch.tensor([0, 0, 0, 0])
    meter = ClassificationMeter(num_bins=2)
    for half in (slice(0, 2), slice(2, 4)):  # sums over batches: the split must not matter
        meter.update(probs[half].log(), targets[half])
    result = meter.compute()
    nll = -(torch.tensor([0.9, 0.2, 0.6, 0.45]).log().mean())
    # bin [0, 0.5): none; bin [0.5, 1]: confidences 0.9, 0.8, 0.6, 0.55, hits 1, 0, 1, 0
    ece = abs((0.9 + 0.8 + 0.6 + 0.55) - 2) / 4
    assert result["top1"] == 50.0 and result["n"] == 4
    assert result["nll"] == pytest.approx(float(nll), rel=1e-6)
    assert result["ece"] == pytest.approx(100 * ece, rel=1e-6)
    binned = ClassificationMeter(num_bins=4)  # bins of 0.25: 0.55, 0.6 in [0.5, 0.75); 0.8, 0.9 above
    binned.update(probs.log(), targets)
    expected = (abs(0.55 + 0.6 - 1) + abs(0.8 + 0.9 - 1)) / 4
    assert binned.compute()["ece"] == pytest.approx(100 * expected, rel=1e-6)


def test_ensemble_kd_loss_is_the_teacher_average():
    torch.manual_seed(8)
    student, teacher = torch.randn(3, 5), torch.randn(4, 3, 5)
    per_teacher = [F.kl_div(F.log_softmax(student / 2, 1), F.log_softmax(t / 2, 1), log_target=True,
                            reduction="batchmean") * 4 for t in teacher]
    torch.testing.assert_close(ensemble_kd_loss(student, teacher, 2.0), torch.stack(per_teacher).mean())
    members = torch.randn(4, 3, 5)
    per_member = [ensemble_kd_loss(members[i], teacher[i : i + 1], 2.0) for i in range(4)]
    torch.testing.assert_close(ensemble_kd_loss(members, teacher, 2.0), torch.stack(per_member).mean())


# ---------------------------------------------------------------- diversifying perturbation
def probe(seed: int = 0):
    """Teachers, a BatchEnsemble student with distinct members, and a normalization."""
    models = TeacherEnsemble(teachers(3))
    torch.manual_seed(seed)
    student = BatchEnsemble(build_model("cnn_tiny", num_classes=10), 3).eval()
    randomize_factors(student, 0.3)
    pixels = PixelRange([0.3], [0.4])
    lower, upper = (-0.3 / 0.4), (0.7 / 0.4)
    x = torch.rand(6, 1, 8, 8) * (upper - lower) + lower
    return models, student, pixels, x


def test_divergence_objective_by_hand():
    t = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])  # (M=2, B=1, K=2)
    s = torch.tensor([[[1.0, 1.0]], [[0.0, 3.0]]])
    def h(p_logits, q_logits):
        return -(F.softmax(p_logits, -1) * F.log_softmax(q_logits, -1)).sum()
    expected = h(t[1, 0], t[0, 0]) - h(s[1, 0], s[0, 0])
    torch.testing.assert_close(divergence_objective(t, s, (0, 1)), expected)
    torch.testing.assert_close(divergence_objective(t, None, (0, 1)), h(t[1, 0], t[0, 0]))


@pytest.mark.parametrize("seed", [0, 1])
def test_perturbation_increases_the_objective_and_stays_in_range(seed):
    models, student, pixels, x = probe(seed)
    torch.manual_seed(seed)
    pair = tuple(torch.randperm(3)[:2].tolist())

    def objective(inputs):
        return divergence_objective(models.member_logits(inputs), student.member_logits(inputs), pair)

    moved = perturb(x, objective, step_size=1e-3, steps=1, pixels=pixels)
    with torch.no_grad():
        assert objective(moved) > objective(x)
    weights = torch.rand(6, 10) * 2 - 1
    def ods(inputs):
        return ods_objective(models.member_logits(inputs), 1, weights)
    with torch.no_grad():
        assert ods(perturb(x, ods, step_size=1e-3, steps=2, pixels=pixels)) > ods(x)

    far = perturb(x, objective, step_size=0.5, steps=2, pixels=pixels)
    lower, upper = pixels.bounds_like(x)
    assert bool(((far >= lower - 1e-6) & (far <= upper + 1e-6)).all())
    assert bool((far == upper).any() or (far == lower).any())  # the clamp was needed


def test_step_size_is_the_per_pixel_rms_and_zero_is_identity():
    models, student, pixels, x = probe()
    def objective(inputs):
        return divergence_objective(models.member_logits(inputs), student.member_logits(inputs), (0, 2))
    assert torch.equal(perturb(x, objective, step_size=0.0, steps=1, pixels=pixels), x)
    moved = perturb(x, objective, step_size=2 / 255, steps=1, pixels=pixels, clamp=False)
    pixel_step = (moved - x) * 0.4
    rms = pixel_step.flatten(1).square().mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.full((6,), 2 / 255), rtol=1e-4, atol=0)


# ---------------------------------------------------------------- methods end to end, export
@pytest.fixture
def teacher_files(tmp_path):
    paths = []
    for i, model in enumerate(teachers(2)):
        path = tmp_path / f"teacher{i}.pt"
        torch.save(model.state_dict(), path)
        paths.append(str(path))
    return paths


def test_teacher_and_teachers_are_exclusive_and_tdiv_needs_two(digits_config, teacher_files):
    with pytest.raises(ConfigError, match="not both"):
        validate(digits_config(teacher={"name": "cnn_tiny", "checkpoint": teacher_files[0]},
                               teachers=[{"name": "cnn_tiny", "checkpoint": teacher_files[1]}]))
    with pytest.raises(ConfigError, match="teachers.0.nmae"):
        validate(digits_config(teachers=[{"name": "cnn_tiny", "nmae": "x"}]))
    config = validate(digits_config(
        teacher={"name": "cnn_tiny", "checkpoint": teacher_files[0]},
        method={"name": "batchensemble_kd", "params": {"perturb": {"objective": "tdiv_sdiv"}}}))
    with pytest.raises(ConfigError, match="at least 2 teachers"):
        train(config, write=False)


def test_batchensemble_kd_with_perturbation_end_to_end_and_export(digits_config, teacher_files, tmp_path):
    from kdlab.cli.main import main
    from kdlab.evaluate import evaluate_checkpoint
    from kdlab.export import export_student

    config = validate(digits_config(
        name="latentbe",
        teachers=[{"name": "cnn_tiny", "checkpoint": p} for p in teacher_files],
        method={"name": "batchensemble_kd", "params": {"perturb": {"objective": "tdiv_sdiv"}}},
        data={"subset": 256}, train={"epochs": 1, "precision": "fp32"}))
    result = train(config)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["model"] == "merged"
    assert {"top1", "nll", "ece", "agreement", "kl"} <= set(summary["test_selected"])
    members = [build_model("cnn_tiny", num_classes=10).eval() for _ in teacher_files]
    for member, path in zip(members, teacher_files, strict=True):
        member.load_state_dict(torch.load(path, weights_only=True))
    ensemble = TeacherEnsemble(members)
    data = build_data({"name": "digits", "batch_size": 64, "val_fraction": 0.2, "subset": 256}, Runtime())
    with torch.no_grad():
        test = [(ensemble(b.inputs), b.targets) for b in data.test]
    mean_prediction = torch.cat([p for p, _ in test]).argmax(1) == torch.cat([y for _, y in test])
    assert summary["reference_test"]["top1"] == pytest.approx(100 * mean_prediction.double().mean().item())
    assert {"nll", "ece"} <= set(summary["reference_test"])
    best = load(result.run_dir / "best.pt")["model"]
    plain = build_model("cnn_tiny", num_classes=10)
    plain.load_state_dict({k.removeprefix("student."): v for k, v in best.items()})
    last = load(result.run_dir / "last.pt")["model"]
    assert any(k.endswith("r_offset") for k in last)
    offsets = [v for k, v in last.items() if k.endswith("s_offset")]
    assert any(v.abs().max() > 0 for v in offsets)  # the factors trained

    evaluated = evaluate_checkpoint(result.run_dir / "last.pt")
    assert evaluated["test"]["top1"] == pytest.approx(summary["test_last"]["top1"], abs=0.01)

    report = export_student(result.run_dir / "last.pt", tmp_path / "export")
    assert set(report["files"]) == {"state_dict", "torchscript", "onnx"}
    assert max(report["max_abs_diff"].values()) < 1e-4
    exported = build_model("cnn_tiny", num_classes=10).eval()
    exported.load_state_dict(torch.load(tmp_path / "export" / "model.pt", weights_only=True))
    ensemble = result.student  # the trained BatchEnsemble; its merge is what was exported
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), merge_batchensemble(ensemble).eval()(x), rtol=1e-5, atol=1e-6)
    cli_out = tmp_path / "cli"
    assert main(["export", str(result.run_dir), "--out", str(cli_out), "--format", "state_dict"]) == 0
    assert json.loads((cli_out / "export.json").read_text())["files"] == {"state_dict": "model.pt"}


def test_ensemble_kd_and_single_member_batchensemble_agree_at_init():
    torch.manual_seed(0)
    student = build_model("cnn_tiny", num_classes=10)
    context = DistillContext(num_classes=10, input_shape=(1, 8, 8), num_train_samples=100)
    teacher = TeacherEnsemble(teachers(1))
    plain = build_distiller(MethodConfig(name="ensemble_kd"), copy.deepcopy(student), teacher, context)
    single = build_distiller(MethodConfig(name="batchensemble_kd"), copy.deepcopy(student), teacher, context)
    batch = Batch(torch.randn(8, 1, 8, 8), torch.randint(10, (8,)), torch.arange(8))
    a, b = plain(batch), single(batch)
    for term in ("ce", "kd"):
        torch.testing.assert_close(a.losses[term], b.losses[term])
    a.losses["kd"].backward()
    b.losses["kd"].backward()
    weight_a = plain.student.stage1[0].conv.weight.grad
    weight_b = single.student.net.stage1[0].conv.weight.grad
    torch.testing.assert_close(weight_a, weight_b)
    assert ensemble_log_probs(torch.zeros(2, 1, 3)).exp().sum().item() == pytest.approx(1.0)
