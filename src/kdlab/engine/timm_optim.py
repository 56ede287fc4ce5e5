"""timm's optimizers by name (``optim.name: timm:NAME``) when timm is installed (``pip install kdlab[timm]``).

``timm.optim.create_optimizer_v2`` builds the optimizer on kdlab's parameter groups (so
``optim.no_decay_norm_bias`` decides weight decay, not timm's grouping) with ``optim.lr`` and
``optim.weight_decay``, ``optim.momentum`` when the optimizer has a momentum and ``optim.betas`` when it
takes two betas; its other settings are timm's defaults. ``lookahead_NAME`` wraps NAME in Lookahead, as
timm's factory reads it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from kdlab.config.schema import TIMM_PREFIX, OptimConfig
from kdlab.core.errors import ConfigError
from kdlab.core.registry import closest

LOOKAHEAD = "lookahead_"
#: how a user lists the names timm's factory takes
LIST_NAMES = "python -c 'import timm.optim; print(timm.optim.list_optimizers())'"


def _timm_optim(key: str) -> ModuleType:
    try:
        module = importlib.import_module("timm.optim")
    except ImportError as err:
        raise ConfigError(f"{key}: timm optimizers need timm: pip install kdlab[timm]") from err
    if not hasattr(module, "list_optimizers"):
        raise ConfigError(f"{key}: timm optimizers by name need timm >= 1.0.12 (timm.optim.list_optimizers)")
    return module


def _base_name(config_name: str) -> str:
    """The optimizer name of ``timm:NAME``, without timm's ``lookahead_`` wrapper prefix."""
    return config_name.removeprefix(TIMM_PREFIX).removeprefix(LOOKAHEAD)


def check_timm_optimizer(config_name: str, key: str) -> ModuleType:
    """``timm.optim``, once it knows ``timm:NAME``; else one line naming ``key``."""
    timm_optim = _timm_optim(key)
    name = _base_name(config_name)
    known = list(timm_optim.list_optimizers())
    if name not in known:
        raise ConfigError(f"{key}: unknown timm optimizer {name!r}{closest(name, known)}; {LIST_NAMES} "
                          "lists the names")
    return timm_optim


def build_timm_optimizer(groups: list[dict], config: OptimConfig) -> torch.optim.Optimizer:
    """timm's optimizer ``config.name`` over ``groups`` (each with its own ``weight_decay``)."""
    timm_optim = check_timm_optimizer(config.name, "optim.name")
    info = timm_optim.get_optimizer_info(_base_name(config.name))
    settings = {"betas": config.betas} if info.has_betas and info.num_betas == 2 else {}
    try:
        return timm_optim.create_optimizer_v2(groups, opt=config.name.removeprefix(TIMM_PREFIX), lr=config.lr,
                                              weight_decay=config.weight_decay, momentum=config.momentum,
                                              **settings)
    except ImportError as err:
        raise ConfigError(f"optim.name: timm optimizer {config.name} needs a package that is not installed "
                          f"({err})") from err
