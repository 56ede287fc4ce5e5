import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.methods import kd_loss


def test_kd_loss_matches_hand_computed_value():
    student = torch.tensor([[1.0, 2.0, 3.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0]])
    t = 2.0
    ps = [math.exp(v / t) for v in (1.0, 2.0, 3.0)]
    pt = [math.exp(v / t) for v in (3.0, 2.0, 1.0)]
    ps = [v / sum(ps) for v in ps]
    pt = [v / sum(pt) for v in pt]
    expected = t * t * sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps, strict=True))
    assert kd_loss(student, teacher, temperature=t).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_batchmean_and_zero_at_equality():
    torch.manual_seed(0)
    z_s, z_t = torch.randn(8, 10), torch.randn(8, 10)
    reference = F.kl_div(F.log_softmax(z_s / 4, 1), F.softmax(z_t / 4, 1), reduction="batchmean") * 16
    assert kd_loss(z_s, z_t, 4.0).item() == pytest.approx(reference.item(), rel=1e-5)
    assert kd_loss(z_t, z_t, 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_gradient_matches_softmax_difference():
    """d L / d z_s = T * (p_s - p_t) / B for the batchmean T^2-scaled KL."""
    z_s = torch.randn(4, 5, requires_grad=True)
    z_t = torch.randn(4, 5)
    t = 3.0
    kd_loss(z_s, z_t, t).backward()
    expected = t * (F.softmax(z_s.detach() / t, 1) - F.softmax(z_t / t, 1)) / 4
    torch.testing.assert_close(z_s.grad, expected, rtol=1e-5, atol=1e-6)
