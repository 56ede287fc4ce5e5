"""Weight averaging of the student, as Trainer callbacks usable with any method.

Strategies (``averaging.strategy`` in a run config): ``swa`` (per-epoch or per-cycle snapshots),
``ema`` (exponential moving average, optional warm-up), ``sma`` (dense uniform average from step t0,
selected on validation), ``swad`` (dense average over the validation-loss valley, with early stop) and
``wakd`` (dense uniform average from a fixed fraction of training, no validation). Each keeps one
averaged copy of the student updated in place on the training device; see
:mod:`kdlab.engine.averaging.base` for the interface and :mod:`kdlab.engine.averaging.bn` for
BatchNorm.
"""

from __future__ import annotations

from pydantic import ValidationError

from kdlab.config.load import ConfigError, explain
from kdlab.config.schema import AveragingConfig
from kdlab.core.registry import UnknownNameError
from kdlab.data.batch import BatchSource
from kdlab.engine.averaging import ema, sma, swa, swad, wakd
from kdlab.engine.averaging.base import MODEL_NAME, STRATEGIES, AveragingStrategy, register_strategy
from kdlab.engine.averaging.bn import recalibrate_bn
from kdlab.engine.averaging.swad import LossValley

__all__ = [
    "MODEL_NAME",
    "STRATEGIES",
    "AveragingStrategy",
    "LossValley",
    "build_averager",
    "ema",
    "recalibrate_bn",
    "register_strategy",
    "sma",
    "swa",
    "swad",
    "wakd",
]


def build_averager(config: AveragingConfig, bn_source: BatchSource | None = None) -> AveragingStrategy | None:
    """The callback for ``config`` (None for ``strategy: none``); ``params`` validated per strategy."""
    if config.strategy == "none":
        return None
    try:
        strategy = STRATEGIES.get(config.strategy)
    except UnknownNameError as exc:
        raise ConfigError(f"averaging.strategy: {exc}; or 'none'") from None
    try:
        params = strategy.Params.model_validate(config.params)
    except ValidationError as exc:
        raise ConfigError(explain(exc, "config", strategy.Params, prefix="averaging.params.")) from None
    return strategy(params, buffers=config.buffers, bn_batches=config.bn_batches, bn_source=bn_source)
