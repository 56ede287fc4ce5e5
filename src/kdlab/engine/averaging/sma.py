"""SMA: the simple moving average of Arpit, Wang, Zhou & Xiong (NeurIPS 2022, "Ensemble of Averages").

A dense uniform average of every iterate from step ``t0`` (default 100, the paper's code) to the end
(:mod:`kdlab.engine.averaging.uniform`); before ``t0`` the averaged model is the online one. The
result is the SMA snapshot with the best validation score on held-out *training-domain* data
(``report = "selected"``): the run layer selects on the averaged model, so ``best.pt`` is that
snapshot. Deviation: the reference code's first averaged update mixes theta_{t0-1} and theta_{t0}
equally (its average starts one step early); here it holds theta_{t0}, ..., theta_t exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from kdlab.engine.averaging.base import register_strategy
from kdlab.engine.averaging.uniform import DenseUniform

if TYPE_CHECKING:
    from kdlab.engine.trainer import Trainer


class SMAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_step: int = Field(100, ge=1, description="t0: the first step averaged")


@register_strategy("sma")
class SMA(DenseUniform):
    Params = SMAParams
    report = "selected"
    uses_validation = True

    def first_iterate(self, trainer: Trainer) -> int:
        return self.params.start_step
