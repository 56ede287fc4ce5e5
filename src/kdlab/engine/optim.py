"""Optimizers and learning-rate schedules.

Schedules are functions of training progress measured in epochs (or in steps for step budgets) and
are applied every step through ``LambdaLR``: multistep changes the rate at the first step of a
milestone epoch (as RepDistiller's per-epoch ``adjust_learning_rate``), cosine and warm-up are smooth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from kdlab.config.schema import TIMM_PREFIX, OptimConfig, ScheduleConfig
from kdlab.engine.timm_optim import build_timm_optimizer

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def parameter_groups(module: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """One group, or two when norm-layer parameters and biases are excluded from weight decay."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    exempt: set[int] = set()
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            if isinstance(sub, _NORM_TYPES) or name.endswith("bias") or p.ndim <= 1:
                exempt.add(id(p))
    decay = [p for p in params if id(p) not in exempt]
    no_decay = [p for p in params if id(p) in exempt]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """kdlab's SGD, Adam or AdamW, or timm's optimizer for ``timm:NAME``, over ``parameter_groups``."""
    groups = parameter_groups(module, config.weight_decay, config.no_decay_norm_bias)
    if config.name.startswith(TIMM_PREFIX):
        return build_timm_optimizer(groups, config)
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=config.betas)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def lr_factor(config: ScheduleConfig, progress: float, total: float, base_lr: float) -> float:
    """The multiplier of the base rate at ``progress`` (epochs or steps) out of ``total``."""
    if config.warmup and progress < config.warmup:
        start = config.warmup_start_factor
        return start + (1.0 - start) * progress / config.warmup
    if config.name == "multistep":
        passed = sum(1 for m in config.milestones if math.floor(progress) >= m)
        return config.gamma**passed
    if config.name == "step":
        return config.gamma ** math.floor(progress / config.step_size)
    if config.name == "onecycle":
        return one_cycle(config, min(progress / max(total, 1e-12), 1.0))
    span = max(total - config.warmup, 1e-12)
    t = min(max(progress - config.warmup, 0.0) / span, 1.0)
    floor = config.min_lr / base_lr
    if config.name == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if config.name == "poly":
        return floor + (1.0 - floor) * (1.0 - t) ** config.power
    return 1.0


def one_cycle(config: ScheduleConfig, t: float) -> float:
    """Smith's one-cycle policy with cosine phases (as torch's ``OneCycleLR``): from ``1/div_factor`` up to
    1 over the first ``pct_start`` of the run, then down to ``1/(div_factor * final_div_factor)``."""
    start = 1.0 / config.div_factor
    end = start / config.final_div_factor
    if t < config.pct_start:
        high, low, phase = 1.0, start, t / config.pct_start
    else:
        high, low, phase = end, 1.0, (t - config.pct_start) / (1.0 - config.pct_start)
    return high + (low - high) * 0.5 * (1.0 + math.cos(math.pi * phase))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, steps_per_unit: int, total_units: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler; ``steps_per_unit`` is steps per epoch (1 for step budgets)."""
    base_lr = optimizer.param_groups[0]["lr"]

    def factor(step: int) -> float:
        return lr_factor(config, step / steps_per_unit, total_units, base_lr)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def count_parameters(modules: Iterable[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())
