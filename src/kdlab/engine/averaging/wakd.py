"""WAKD: weight-averaged knowledge distillation (Berezovskiy & Morozov, ICCV 2023 OOD-CV workshop,
arXiv 2309.11446; code vorobeevich/distillation-in-dg).

The student's weights are averaged uniformly over every step from a fixed fraction of the step
budget (10%: step 5,000 of 50,000 in the paper's code) to the end, with no validation-based start,
stop or selection; the result is that final average:

    theta_WAKD = (1 / (T - s + 1)) * sum_{t=s..T} theta_t,   s = round(start_fraction * T)

The paper's code keeps BatchNorm frozen and does not re-estimate statistics (``student.freeze_bn``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from kdlab.engine.averaging.base import register_strategy, start_step
from kdlab.engine.averaging.uniform import DenseUniform

if TYPE_CHECKING:
    from kdlab.engine.trainer import Trainer


class WAKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="first averaged step, as a fraction")


@register_strategy("wakd")
class WAKD(DenseUniform):
    Params = WAKDParams
    report = "last"

    def first_iterate(self, trainer: Trainer) -> int:
        return start_step(trainer, self.params.start_fraction)
