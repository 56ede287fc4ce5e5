import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kdlab.config import validate
from kdlab.data.batch import Batch
from kdlab.engine.logger import read_metrics
from kdlab.methods import DistillContext, build_distiller
from kdlab.methods.ipwd import WeightStats, ipw_weights, normalize_logits, per_sample_kd, pskd_alpha
from kdlab.methods.kd import kd_loss
from kdlab.models import build_model
from kdlab.run import train

CONTEXT = DistillContext(10, (1, 8, 8), 32, "cnn_tiny", "cnn_tiny")


def distiller(method, **params):
    config = validate({"data": {"name": "digits"}, "student": {"name": "cnn_tiny"}, "train": {"epochs": 1},
                       "method": {"name": method, "params": params}}).method
    torch.manual_seed(0)
    student, teacher = build_model("cnn_tiny", 10), build_model("cnn_tiny", 10)
    return build_distiller(config, student, None if method == "ipwd_self" else teacher, CONTEXT)


def batch(size=6):
    generator = torch.Generator().manual_seed(3)
    return Batch(torch.randn(size, 1, 8, 8, generator=generator), torch.arange(size) % 10, torch.arange(size))


def test_weights_on_hand_built_logits():
    # sample 0: both heads put probability 1/2 on y; sample 1: the KD head (copying a teacher that
    # under-predicts y) puts 1/5 on y, the CE head 4/5.
    kd = torch.log(torch.tensor([[1.0, 1.0], [1.0, 4.0]]))
    cls = torch.log(torch.tensor([[1.0, 1.0], [4.0, 1.0]]))
    y = torch.tensor([0, 0])
    h_kd, h_cls = torch.tensor([math.log(2), math.log(5)]), torch.tensor([math.log(2), math.log(1.25)])
    plain = dict(logit_norm="none", w_max=None)
    assert torch.allclose(ipw_weights(kd, cls, y, orientation="kd_over_cls", **plain), 1 + h_kd / h_cls)
    assert torch.allclose(ipw_weights(kd, cls, y, orientation="cls_over_kd", **plain), 1 + h_cls / h_kd)
    reported = ipw_weights(kd, cls, y, orientation="cls_over_kd", **plain)
    assert reported[1] < reported[0]  # the reported formula down-weights the under-represented sample
    clipped = ipw_weights(kd, cls, y, orientation="kd_over_cls", logit_norm="none", w_max=5.0)
    assert torch.allclose(clipped, torch.tensor([2.0, 5.0]))
    normalized = ipw_weights(kd, cls, y, logit_norm="none", w_max=5.0, normalize=True)
    assert torch.allclose(normalized, torch.tensor([2.0, 5.0]) / 3.5)
    z = torch.randn(4, 7)
    assert torch.allclose(normalize_logits(3 * z + 2), normalize_logits(z), atol=1e-5)
    assert torch.allclose(normalize_logits(z).std(dim=1, unbiased=False), torch.ones(4), atol=1e-5)


def test_weight_statistics_rank_classes_by_teacher_mass():
    stats = WeightStats(num_classes=4, group_fraction=0.25, w_max=3.0)
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1],
                          [0.1, 0.1, 0.1, 0.7], [0.1, 0.8, 0.0, 0.1]])
    stats.update(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 2, 3]), probs)
    result = stats.compute()
    assert result == pytest.approx({"ipw_mean": 2.5, "ipw_max": 4.0, "ipw_clipped": 0.5,
                                    "ipw_head": 1.5, "ipw_tail": 3.0})
    assert stats.compute() == {}


def test_no_gradient_through_the_propensity_with_stop_gradient():
    b = batch()
    grads = {}
    for stop in (True, False):
        d = distiller("ipwd", stop_gradient=stop)
        out = d(b)
        out.losses["kd"].backward()
        grads[stop] = d.cls_head.weight.grad
        if stop:
            d.zero_grad()
            with torch.no_grad():
                teacher = d.teacher(b.inputs)
            logits, features = d.run_student(b.inputs)
            w = ipw_weights(logits.detach(), d.cls_head(features).detach(), b.targets)
            (w * per_sample_kd(logits, teacher, 4.0)).mean().backward()
            manual = [p.grad.clone() for p in d.student.parameters()]
            d.zero_grad()
            d(b).losses["kd"].backward()
            for p, g in zip(d.student.parameters(), manual, strict=True):
                assert torch.allclose(p.grad, g, atol=1e-6)
    assert grads[True] is None
    assert grads[False] is not None and grads[False].abs().sum() > 0


def test_weights_apply_from_start_epoch_and_only_to_the_kd_term():
    b = batch()
    d = distiller("ipwd", start_epoch=2)
    out = d(b, replace(d.first_step(), stage_progress=1.5))
    assert torch.allclose(out.losses["kd"], kd_loss(out.logits, d.teacher(b.inputs)))
    assert torch.allclose(out.losses["ce"], F.cross_entropy(out.logits, b.targets))
    later = d(b, replace(d.first_step(), stage_progress=2.0))
    assert not torch.allclose(later.losses["kd"], out.losses["kd"])
    aux = distiller("ipwd", kd_head="aux")
    assert set(aux(b).losses) == {"ce", "kd", "aux", "aux_kd"}


def test_self_distillation_is_pskd_with_unit_weights():
    b = batch()
    d = distiller("ipwd_self", epochs=4, start_epoch=100)
    assert pskd_alpha(0.5, 4, 0.8) == pytest.approx(0.2) and pskd_alpha(3.9, 4, 0.8) == pytest.approx(0.8)
    first = d(b)
    assert torch.allclose(first.losses["ce"] + first.losses["sd"], F.cross_entropy(first.logits, b.targets))
    stored = F.softmax(first.logits.detach(), dim=1)
    assert bool(d.seen[:6].all()) and torch.allclose(d.predictions[:6], stored)
    second = d(b, replace(d.first_step(), stage_progress=2.0))
    target = 0.4 * F.one_hot(b.targets, 10) + 0.6 * stored
    expected = -(target * F.log_softmax(second.logits, dim=1)).sum(1).mean()
    assert torch.allclose(second.losses["ce"] + second.losses["sd"], expected, atol=1e-6)


def test_weight_statistics_are_logged_each_evaluation(digits_config, tmp_path):
    teacher = train(validate(digits_config(name="teacher", student={"name": "cnn_small"},
                                           data={"subset": 128}, train={"epochs": 1})))
    config = validate(digits_config(name="ipwd", method={"name": "ipwd"}, data={"subset": 128},
                                    teacher={"name": "cnn_small", "checkpoint": str(teacher.run_dir)},
                                    train={"epochs": 2}))
    result = train(config)
    records = [r for r in read_metrics(result.run_dir) if r["kind"] == "method"]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        assert {"ipw_mean", "ipw_max", "ipw_head", "ipw_tail", "ipw_clipped"} <= set(record)
        assert 1.0 <= record["ipw_mean"] <= record["ipw_max"] <= 10.0
    assert result.summary["extra_params"] == 32 * 10 + 10
