"""Logit-based methods: DKD, BSS and DML (losses against hand-computed reference conventions, gradients,
and a few training steps on digits and on same- and cross-architecture CIFAR-sized pairs)."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.config import ConfigError, validate
from kdlab.config.schema import MethodConfig
from kdlab.core.checkpoint import load
from kdlab.data.batch import Batch
from kdlab.engine.logger import read_metrics
from kdlab.methods import METHODS, DistillContext, build_distiller
from kdlab.methods.base import StageInfo, StepContext, weighted_sum
from kdlab.methods.bss import (
    bss_attack,
    sample_attack_classes,
    schedule_weights,
    select_base_samples,
    soft_target_loss,
)
from kdlab.methods.dkd import dkd_loss, dkd_parts, warmup_factor
from kdlab.methods.dml import mutual_losses
from kdlab.models import build_model
from kdlab.run import train

CONTEXT = DistillContext(num_classes=3, input_shape=(1, 4, 4), num_train_samples=10)


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def batch(n: int = 8) -> Batch:
    torch.manual_seed(5)
    return Batch(torch.randn(n, 1, 4, 4), torch.randint(0, 3, (n,)), torch.arange(n))


def distiller(name: str, teacher: nn.Module | None = None, **method):
    return build_distiller(MethodConfig(name=name, **method), net(0), teacher, CONTEXT)


# ----------------------------------------------------------------------------------------------- DKD
def mdistiller_dkd(z_s, z_t, y, alpha, beta, t):
    """mdistiller's DKD.py convention written out: masks, 1000-subtraction, sum / B, T^2."""
    gt = F.one_hot(y, z_s.shape[1]).bool()
    p_s, p_t = F.softmax(z_s / t, 1), F.softmax(z_t / t, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], 1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum() * t**2 / len(y)
    q_t = F.softmax(z_t / t - 1000.0 * gt, 1)
    log_q_s = F.log_softmax(z_s / t - 1000.0 * gt, 1)
    nckd = (torch.xlogy(q_t, q_t) - q_t * log_q_s).sum() * t**2 / len(y)
    return alpha * tckd + beta * nckd, tckd, nckd


def test_dkd_matches_mdistiller_formula():
    torch.manual_seed(0)
    z_s, z_t, y = torch.randn(4, 5) * 3, torch.randn(4, 5) * 3, torch.tensor([0, 2, 4, 2])
    for alpha, beta, t in [(1.0, 8.0, 4.0), (1.0, 2.0, 1.0), (0.5, 6.0, 2.0)]:
        expected, tckd, nckd = mdistiller_dkd(z_s, z_t, y, alpha, beta, t)
        torch.testing.assert_close(dkd_loss(z_s, z_t, y, alpha, beta, t), expected)
        torch.testing.assert_close(dkd_parts(z_s, z_t, y, t), (tckd, nckd))
    # TCKD + NCKD weighted by the teacher's non-target mass is the classical KD (the paper's Eq. 4 check).
    b_t = F.softmax(z_t, 1).gather(1, y[:, None]).squeeze(1)
    log_p_s, log_p_t = F.log_softmax(z_s, 1), F.log_softmax(z_t, 1)
    kd = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)
    tckd_i = [dkd_parts(z_s[i:i + 1], z_t[i:i + 1], y[i:i + 1], 1.0) for i in range(4)]
    torch.testing.assert_close(torch.stack([a + (1 - b_t[i]) * b for i, (a, b) in enumerate(tckd_i)]), kd)


def test_dkd_warmup_is_mdistillers_one_based_epoch_factor():
    assert warmup_factor(0.0, 20) == pytest.approx(1 / 20)
    assert warmup_factor(0.99, 20) == pytest.approx(1 / 20)
    assert warmup_factor(1.0, 20) == pytest.approx(2 / 20)
    assert warmup_factor(19.0, 20) == 1.0 and warmup_factor(150.0, 20) == 1.0
    assert warmup_factor(0.0, 0) == 1.0
    dkd = distiller("dkd", net(1), params={"beta": 6.0, "warmup_epochs": 4}).train()
    b = batch()
    for progress, factor in [(0.5, 0.25), (2.0, 0.75), (3.0, 1.0)]:
        out = dkd(b, replace(dkd.first_step(), stage_progress=progress))
        with torch.no_grad():
            expected = dkd_loss(dkd.student(b.inputs), dkd.teacher(b.inputs), b.targets, 1.0, 6.0, 4.0)
        torch.testing.assert_close(out.losses["dkd"], factor * expected)
    assert dkd.weights == {"ce": 1.0, "dkd": 1.0}
    teacher = dkd.teacher
    running = [m.running_mean.clone() for m in teacher.modules() if hasattr(m, "running_mean")]
    weighted_sum(dkd(b).losses, dkd.weights).backward()
    assert all(p.grad is not None for p in dkd.student.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    after = [m.running_mean for m in teacher.modules() if hasattr(m, "running_mean")]
    assert all(torch.equal(a, r) for a, r in zip(after, running, strict=True))


# ----------------------------------------------------------------------------------------------- BSS
def test_bss_soft_losses_match_official_and_aberhu_values_and_share_gradients():
    torch.manual_seed(1)
    z_t = torch.randn(5, 4)
    z_s = torch.randn(5, 4, requires_grad=True)
    t = 3.0
    official = -(F.softmax(z_t / t, 1) * F.log_softmax(z_s / t, 1)).sum() / 5
    aberhu = F.kl_div(F.log_softmax(z_s / t, 1), F.softmax(z_t / t, 1), reduction="batchmean")
    ours_ce = soft_target_loss(z_s, z_t, t)
    ours_kl = soft_target_loss(z_s, z_t, t, divergence="kl")
    torch.testing.assert_close(ours_ce, official)
    torch.testing.assert_close(ours_kl, aberhu)
    torch.testing.assert_close(soft_target_loss(z_s, z_t, t, t_squared=True), official * 9)
    grads = [torch.autograd.grad(v, z_s)[0] for v in (ours_ce, ours_kl)]
    torch.testing.assert_close(grads[0], grads[1])


def test_bss_schedules():
    a, b = schedule_weights(0.0, 80)  # official epoch 1
    assert a == pytest.approx(1 + 3 * (1 - 1 / 80)) and b == pytest.approx(2 * (1 - 4 / 3 / 80))
    assert schedule_weights(59.5, 80) == pytest.approx((1 + 3 * 0.25, 0.0))  # epoch 60: b reaches 0
    assert schedule_weights(79.0, 80) == pytest.approx((1.0, 0.0))
    assert schedule_weights(9.9, 200, "aberhu") == (0.0, 0.0)  # epochs 1..10: warm-up
    assert schedule_weights(10.0, 200, "aberhu") == pytest.approx((0.0, 2 * (1 - 1.25 * 10 / 200)))
    assert schedule_weights(170.0, 200, "aberhu") == (0.0, 0.0)


def test_bss_base_sample_selection_rules():
    y = torch.tensor([0, 1, 2, 0])
    z_t = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 5], [0, 5, 0]])  # teacher right on 0, 1, 2
    z_s = torch.tensor([[0.0, 5, 0], [0, 5, 0], [0, 0, 1], [5, 0, 0]])  # student right on 1, 2, 3
    assert select_base_samples(z_t, z_s, y, 64).tolist() == [0, 1, 2]
    assert select_base_samples(z_t, z_s, y, 64, "both").tolist() == [1, 2]
    diff = (z_t.softmax(1) - z_s.softmax(1)) ** 2
    score = diff.sum(1) - diff.gather(1, y[:, None]).squeeze(1)
    top2 = score[:3].argsort(descending=True)[:2]
    assert select_base_samples(z_t, z_s, y, 2).tolist() == top2.tolist() == [0, 2]


def test_bss_attack_classes_are_never_the_teachers_top1():
    torch.manual_seed(0)
    z_t = torch.tensor([[4.0, 2.0, 0.0, -30.0]] * 2000 + [[300.0, 0.0, 0.0, 0.0]])
    classes = sample_attack_classes(z_t)
    assert (classes != 0).all() and (classes[:-1] != 3).all()
    p = z_t[0, 1:].softmax(0)
    freq = torch.bincount(classes[:-1], minlength=4)[1:].float() / 2000
    torch.testing.assert_close(freq, p, atol=0.03, rtol=0)
    assert classes[-1] in (1, 2, 3)  # all non-top-1 mass underflows: falls back to the runner-up


def official_attack_step(model, x, gt, target, alpha=0.3):
    """One step of bhheo/BSS_distillation's attack_BSS.py, written out on logits."""
    x = x.clone().requires_grad_(True)
    out = model(x)
    s_gt, s_tg = out.gather(1, gt[:, None]), out.gather(1, target[:, None])
    (s_tg - s_gt).sum().backward()
    step = alpha * (gt == out.argmax(1)).float().view(-1, 1, 1, 1)
    grad = x.grad
    norm = grad.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
    pert = (s_gt - s_tg).detach().view(-1, 1, 1, 1)
    return torch.clamp(x.detach() + step * (pert + 1e-4) * grad / norm, -2.5, 2.5)


def test_bss_attack_matches_official_step_moves_toward_target_and_leaves_teacher_untouched():
    teacher = net(3).eval()
    teacher.requires_grad_(False)
    torch.manual_seed(2)
    x = torch.randn(16, 1, 4, 4).clamp(-2.5, 2.5)  # inside the clamp box, as normalized images are
    gt = teacher(x).argmax(1)
    target = (gt + 1) % 3
    reference = official_attack_step(teacher.requires_grad_(True), x, gt, target)
    for p in teacher.parameters():
        p.grad = None
    teacher.requires_grad_(False)
    torch.testing.assert_close(bss_attack(teacher, x, gt, target, steps=1), reference)

    running = teacher[2].running_mean.clone()
    attacked = bss_attack(teacher, x, gt, target, steps=10)
    rows = torch.arange(16)
    with torch.no_grad():
        before, after = teacher(x), teacher(attacked)
    margin = lambda z: z[rows, target] - z[rows, gt]  # noqa: E731
    assert (margin(after) > margin(before)).all()
    with torch.no_grad():
        one_step = teacher(reference)
    assert (margin(after) >= margin(one_step)).all() and (margin(after) > margin(one_step)).any()
    assert all(p.grad is None for p in teacher.parameters())
    assert torch.equal(teacher[2].running_mean, running)
    probs = bss_attack(teacher, x, gt, target, space="probs")
    with torch.no_grad():
        assert (margin(teacher(probs).softmax(1)) > margin(before.softmax(1))).all()


def test_bss_distiller_step_gives_teacher_no_grad_and_keeps_its_statistics():
    teacher = net(1).eval()
    x = torch.randn(32, 1, 4, 4)
    with torch.no_grad():  # labels the teacher gets right, so every sample is a candidate
        b = Batch(x, teacher(x).argmax(1), torch.arange(32))
    bss = distiller("bss", teacher, params={"epochs": 10, "attack_size": 4}).train()
    running = teacher[2].running_mean.clone()
    out = bss(b)
    assert set(out.losses) == {"ce", "kd", "bss"} and float(out.losses["bss"].detach()) > 0
    weighted_sum(out.losses, bss.weights).backward()
    assert all(p.grad is not None for p in bss.student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert torch.equal(teacher[2].running_mean, running)
    kd_factor, bss_factor = schedule_weights(0.0, 10)
    with torch.no_grad():
        clean = soft_target_loss(bss.student(x), teacher(x), 3.0)
    assert float(out.losses["kd"].detach()) == pytest.approx(kd_factor * float(clean), rel=1e-5)
    late = replace(bss.first_step(), stage_progress=8.0)  # b(e) = 0 from 75 % of training on: no attack
    assert float(bss(b, late).losses["bss"]) == 0.0


def test_bss_schedule_length_defaults_to_the_stage_length():
    teacher = net(1).eval()
    x = torch.randn(8, 1, 4, 4)
    with torch.no_grad():
        b = Batch(x, teacher(x).argmax(1), torch.arange(8))
    bss = distiller("bss", teacher, params={"attack_size": 4}).train()
    def epoch_9_of(epochs: float) -> StepContext:
        return replace(bss.first_step(), stage=StageInfo(epochs=epochs), stage_progress=8.0)

    assert float(bss(b, epoch_9_of(40.0)).losses["bss"].detach()) > 0  # boundary factor still positive
    assert float(bss(b, epoch_9_of(10.0)).losses["bss"]) == 0.0  # past 75 %, no attack


# ----------------------------------------------------------------------------------------------- DML
def test_dml_mutual_losses_match_hand_computation():
    torch.manual_seed(4)
    z = [torch.randn(6, 5) for _ in range(3)]
    p = [F.softmax(v, 1) for v in z]
    for k, loss in enumerate(mutual_losses(z)):
        kls = [F.kl_div(F.log_softmax(z[k], 1), p[j], reduction="batchmean") for j in range(3) if j != k]
        torch.testing.assert_close(loss, sum(kls) / 2)
    two = mutual_losses(z[:2])
    torch.testing.assert_close(two[0], F.kl_div(F.log_softmax(z[0], 1), p[1], reduction="batchmean"))


def test_dml_peer_gradients_are_independent():
    context = DistillContext(num_classes=10, input_shape=(1, 8, 8), num_train_samples=10,
                             student_name="cnn_tiny")
    student = build_model("cnn_tiny", 10, in_channels=1)
    dml = build_distiller(MethodConfig(name="dml", params={"peers": 3}), student, None, context).train()
    assert len(dml.peers) == 2 and dml.teacher is None
    assert set(dml.eval_models()) == {"peer1", "peer2"}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    models = [dml.student, *dml.peers]
    for k in range(3):
        dml.zero_grad(set_to_none=True)
        logits = [m(x) for m in models]
        (F.cross_entropy(logits[k], y) + mutual_losses(logits)[k]).backward()
        for j, m in enumerate(models):
            has_grad = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m.parameters()]
            assert all(has_grad) if j == k else not any(has_grad), (k, j)
    assert any(k.startswith("peers.1.") for k in dml.state_dict())


def test_dml_bad_peer_config_is_one_clear_line():
    context = DistillContext(num_classes=10, input_shape=(1, 8, 8), num_train_samples=10,
                             student_name="cnn_tiny")
    student = build_model("cnn_tiny", 10, in_channels=1)
    with pytest.raises(ConfigError, match=r"method.params.peer_models: 2 names for peers=2"):
        build_distiller(MethodConfig(name="dml", params={"peers": 2, "peer_models": ["cnn_tiny"] * 2}),
                        student, None, context)
    with pytest.raises(ConfigError, match=r"method.params.peer_models: .*cnn_tinyy"):
        build_distiller(MethodConfig(name="dml", params={"peer_models": ["cnn_tinyy"]}), student, None,
                        context)
    built = build_distiller(MethodConfig(name="dml", params={"peer_models": ["cnn_small", "cnn_tiny"]}),
                            student, None, context)
    assert len(built.peers) == 2


# ---------------------------------------------------------------------------------- training runs
# CIFAR architectures on 16x16 synthetic images (they pool adaptively): a quarter of the 32x32 cost.
SYNTHETIC = {"name": "synthetic", "batch_size": 8, "val_fraction": 0.25, "image_size": 16,
             "options": {"num_classes": 10, "num_train": 32, "num_test": 16}}
PARAMS = {"dkd": {}, "bss": {"epochs": 4}, "dml": {}}
PAIRS = {  # (student, teacher or the other peer's model): same architecture family, then cross
    "dkd": [("resnet8", "resnet14"), ("shufflenetv2", "resnet32x4")],
    "bss": [("resnet8", "resnet14"), ("shufflenetv2", "resnet32x4")],
    "dml": [("resnet8", "resnet8"), ("shufflenetv2", "resnet8")],
}


def run(digits_config, method, student, teacher, data=None, name=None, params=None, steps=3):
    tree = {"name": name or f"{method}-{student}", "student": {"name": student},
            "method": {"name": method, "params": params or PARAMS[method]},
            "train": {"epochs": None, "steps": steps, "eval_every": steps, "log_every": 1},
            "data": data or {"subset": 200}}
    module = None
    if method == "dml":
        tree["method"]["params"] = params or {"peer_models": [teacher]}
    else:
        tree["teacher"] = {"name": teacher}
        module = build_model(teacher, 10, in_channels=1 if data is None else 3)
    return train(validate(digits_config(**tree)), teacher=module)


@pytest.mark.parametrize("method", ["dkd", "bss", "dml"])
def test_methods_train_on_digits_and_cifar_sized_pairs(digits_config, method):
    result = run(digits_config, method, "cnn_tiny", "cnn_small")
    assert result.summary["steps"] == 3
    records = [r for r in read_metrics(result.run_dir) if r["kind"] == "train"]
    assert len(records) == 3 and all(set(METHODS.get(method).terms) <= set(r) for r in records)
    for student, other in PAIRS[method]:
        out = run(digits_config, method, student, other, data=SYNTHETIC, name=f"{method}-{student}-syn",
                  steps=2)
        assert out.summary["steps"] == 2


@pytest.mark.parametrize("peers", [2, 3])
def test_dml_cohort_evaluates_and_checkpoints_every_peer(digits_config, peers):
    params = {"peers": peers} if peers == 2 else {"peer_models": ["cnn_small", "cnn_tiny"]}
    result = run(digits_config, "dml", "cnn_tiny", "cnn_tiny", params=params, name=f"dml{peers}")
    evals = [r for r in read_metrics(result.run_dir) if r["kind"] == "eval"]
    names = {"student", *(f"peer{i}" for i in range(1, peers))}
    assert {r["model"] for r in evals} == names
    assert all("top1" in r for r in evals)
    state = load(result.run_dir / "last.pt")["model"]
    assert {k.split(".")[1] for k in state if k.startswith("peers.")} == {str(i) for i in range(peers - 1)}
    assert result.summary["extra_params"] > 0
    if peers == 3:  # the last peer, a cnn_tiny beside a cnn_small one: evaluated and exported on its own
        from kdlab.evaluate import evaluate_checkpoint
        from kdlab.export import export_student

        last_peer = [r for r in evals if r["model"] == "peer2"][-1]
        evaluated = evaluate_checkpoint(result.run_dir / "last.pt", splits=["val"], model="peer2")
        assert evaluated["val"]["top1"] == pytest.approx(last_peer["top1"], abs=1e-6)
        report = export_student(result.run_dir / "last.pt", result.run_dir / "export", model="peer2",
                                formats=["state_dict"])
        assert report["model"] == "SmallCNN" and report["max_abs_diff"]["state_dict"] == 0.0
        with pytest.raises(ConfigError, match="no model 'peer9'; models: student, peer1, peer2"):
            evaluate_checkpoint(result.run_dir, model="peer9")
