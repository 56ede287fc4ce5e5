import pytest
import torch
from torch import nn

from kdlab.config import ConfigError
from kdlab.config.schema import MethodConfig
from kdlab.data.batch import Batch
from kdlab.methods import DistillContext, build_distiller
from kdlab.methods.base import weighted_sum

CONTEXT = DistillContext(num_classes=3, input_shape=(1, 4, 4), num_train_samples=10)


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def batch(n: int = 6) -> Batch:
    return Batch(torch.randn(n, 1, 4, 4), torch.randint(0, 3, (n,)), torch.arange(n))


def kd(**method) -> nn.Module:
    return build_distiller(MethodConfig(name="kd", **method), net(0), net(1), CONTEXT)


def test_teacher_is_outside_module_tree_frozen_and_eval():
    distiller = kd()
    teacher_params = {id(p) for p in distiller.teacher.parameters()}
    assert not teacher_params & {id(p) for p in distiller.parameters()}
    assert all(k.startswith("student.") for k in distiller.state_dict())
    distiller.train()
    assert distiller.training and distiller.student.training and not distiller.teacher.training
    assert not any(p.requires_grad for p in distiller.teacher.parameters())
    assert distiller.extra_parameter_count() == 0


def test_gradients_reach_student_never_teacher_and_teacher_bn_stats_do_not_move():
    distiller = kd().train()
    running = distiller.teacher[2].running_mean.clone()
    out = distiller(batch())
    weighted_sum(out.losses, distiller.weights).backward()
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert torch.equal(distiller.teacher[2].running_mean, running)
    assert set(out.losses) == {"ce", "kd"} and out.logits.shape == (6, 3)


def test_place_moves_the_teacher_and_to_only_the_trainable_modules():
    distiller = kd().to(torch.float64)
    assert next(distiller.student.parameters()).dtype == torch.float64
    assert next(distiller.teacher.parameters()).dtype == torch.float32
    distiller.place(torch.float64)
    assert next(distiller.teacher.parameters()).dtype == torch.float64


def test_weights_come_from_config_and_unknown_terms_are_refused():
    assert kd().weights == {"ce": 0.1, "kd": 0.9}
    assert kd(weights={"kd": 0.5}).weights == {"ce": 0.1, "kd": 0.5}
    with pytest.raises(ConfigError, match=r"method.weights.kld.*did you mean 'kd'"):
        kd(weights={"kld": 1.0})
    with pytest.raises(ConfigError, match=r"method.params.temprature.*did you mean 'temperature'"):
        kd(params={"temprature": 2})


def test_weighted_sum_combines_terms():
    distiller = kd(weights={"ce": 2.0, "kd": 0.0})
    out = distiller(batch())
    torch.testing.assert_close(weighted_sum(out.losses, distiller.weights), 2.0 * out.losses["ce"])


def test_teacher_inputs_renormalized_when_statistics_differ():
    distiller = build_distiller(MethodConfig(name="kd"), net(0), net(1), CONTEXT,
                                student_norm=([0.5], [0.25]), teacher_norm=([0.0], [1.0]))
    raw = torch.rand(2, 1, 4, 4)
    student_view = (raw - 0.5) / 0.25
    torch.testing.assert_close(distiller.teacher_inputs(student_view), raw)
    same = build_distiller(MethodConfig(name="kd"), net(0), net(1), CONTEXT,
                           student_norm=([0.5], [0.25]), teacher_norm=([0.5], [0.25]))
    assert same.teacher_inputs(student_view) is student_view


def test_kd_without_teacher_is_refused():
    with pytest.raises(ValueError, match="needs a teacher"):
        build_distiller(MethodConfig(name="kd"), net(0), None, CONTEXT)
