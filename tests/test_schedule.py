import pytest
import torch

from kdlab.config.schema import OptimConfig, ScheduleConfig
from kdlab.engine.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups
from kdlab.engine.precision import resolve_precision


def test_multistep_changes_rate_at_milestone_epochs():
    config = ScheduleConfig(name="multistep", milestones=[150, 180, 210], gamma=0.1)
    assert lr_factor(config, 149.99, 240, 0.05) == 1.0
    assert lr_factor(config, 150.0, 240, 0.05) == pytest.approx(0.1)
    assert lr_factor(config, 200.0, 240, 0.05) == pytest.approx(0.01)
    assert lr_factor(config, 239.5, 240, 0.05) == pytest.approx(0.001)


def test_cosine_with_warmup_and_floor():
    config = ScheduleConfig(name="cosine", warmup=2, warmup_start_factor=0.1, min_lr=0.001)
    assert lr_factor(config, 0, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(config, 1, 10, 0.1) == pytest.approx(0.55)
    assert lr_factor(config, 2, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(config, 10, 10, 0.1) == pytest.approx(0.01)


def test_step_poly_and_onecycle_schedules():
    step = ScheduleConfig(name="step", step_size=3, gamma=0.5)
    assert [lr_factor(step, e, 10, 0.1) for e in (0, 2.9, 3, 6.5)] == [1.0, 1.0, 0.5, 0.25]
    poly = ScheduleConfig(name="poly", power=2.0, min_lr=0.01)
    assert lr_factor(poly, 0, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(poly, 5, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.25)
    assert lr_factor(poly, 10, 10, 0.1) == pytest.approx(0.1)
    cycle = ScheduleConfig(name="onecycle", pct_start=0.25, div_factor=10, final_div_factor=100)
    assert lr_factor(cycle, 0, 8, 0.1) == pytest.approx(0.1)
    assert lr_factor(cycle, 1, 8, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way up (cosine)
    assert lr_factor(cycle, 2, 8, 0.1) == pytest.approx(1.0)
    assert lr_factor(cycle, 8, 8, 0.1) == pytest.approx(0.1 / 100)
    with pytest.raises(ValueError, match="step_size"):
        ScheduleConfig(name="step")
    with pytest.raises(ValueError, match="unset warmup"):
        ScheduleConfig(name="onecycle", warmup=1)


def test_warmup_applies_to_every_schedule():
    for name in ("multistep", "cosine", "poly", "constant"):
        config = ScheduleConfig(name=name, warmup=2, warmup_start_factor=0.1)
        assert lr_factor(config, 1, 10, 0.1) == pytest.approx(0.55)


def test_scheduler_steps_per_iteration():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, OptimConfig(lr=1.0))
    scheduler = build_scheduler(optimizer, ScheduleConfig(milestones=[2]), steps_per_unit=3, total_units=4)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1, 1, 1, 1, 1, 1, 0.1, 0.1])


def test_no_decay_groups_exempt_norm_and_bias():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(2, 2))
    decay, no_decay = parameter_groups(model, 5e-4, no_decay_norm_bias=True)
    assert len(decay["params"]) == 2 and len(no_decay["params"]) == 4
    assert no_decay["weight_decay"] == 0.0


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu).dtype is None
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    assert resolve_precision("auto", cpu).name in {"bf16", "fp32"}
