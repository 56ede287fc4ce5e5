"""EMA: an exponential moving average of the weights (Polyak & Juditsky, 1992; the ``ModelEmaV3`` of
timm and ``get_ema_multi_avg_fn`` of torch), updated after every optimizer step from ``start_step``:

    theta_EMA <- beta_k * theta_EMA + (1 - beta_k) * theta_t,   k = 1, 2, ... updates so far

``beta_k = decay``; with ``warmup`` it is timm's warm-up ``beta_k = min(decay, 1 - (1 + (k-1)/gamma)^-p)``
(``gamma = warmup_gamma``, ``p = warmup_power``; timm's defaults 1 and 2/3). The first update copies
the weights (beta_1 = 0). With ``warmup``, ``gamma = p = 1`` and ``decay = 1`` the EMA is the exact
uniform average (beta_k = (k-1)/k). The result is the final EMA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from kdlab.engine.averaging.base import AveragingStrategy, register_strategy

if TYPE_CHECKING:
    from kdlab.engine.trainer import Trainer


class EMAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decay: float = Field(0.999, gt=0.0, le=1.0)
    start_step: int = Field(1, ge=1, description="first step folded into the EMA")
    warmup: bool = False
    warmup_gamma: float = Field(1.0, gt=0.0)
    warmup_power: float = Field(2 / 3, gt=0.0)


def ema_decay(params: EMAParams, k: int) -> float:
    """The decay of the ``k``-th update (k = 1 is the first)."""
    if k <= 1:
        return 0.0
    if not params.warmup:
        return params.decay
    warm = 1.0 - (1.0 + (k - 1) / params.warmup_gamma) ** -params.warmup_power
    return min(params.decay, warm)


@register_strategy("ema")
class EMA(AveragingStrategy):
    Params = EMAParams
    report = "last"

    def first_iterate(self, trainer: Trainer) -> int:
        return self.params.start_step

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step >= self.params.start_step:
            self.ema(trainer.step, ema_decay(self.params, self.iterates + 1))
