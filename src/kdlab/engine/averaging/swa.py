"""SWA: Stochastic Weight Averaging (Izmailov, Podoprikhin, Garipov, Vetrov & Wilson, UAI 2018).

A uniform average of sparse snapshots: the weights at the end of every epoch (``cycle_steps`` unset)
or every ``cycle_steps`` steps (one snapshot per learning-rate cycle when the schedule is cyclic),
from ``start_fraction`` of the step budget on (the paper starts after 75% of the budget):

    theta_SWA = (1/n) * sum_i theta_{t_i},   t_i >= start

The end of the last (possibly partial) epoch counts as an epoch end. The result is the final average.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from kdlab.engine.averaging.base import AveragingStrategy, register_strategy, start_step

if TYPE_CHECKING:
    from kdlab.engine.trainer import Trainer


class SWAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_fraction: float = Field(0.75, ge=0.0, lt=1.0, description="first snapshot, as a fraction of steps")
    cycle_steps: int | None = Field(None, gt=0, description="snapshot every N steps; unset: every epoch end")


@register_strategy("swa")
class SWA(AveragingStrategy):
    Params = SWAParams
    report = "last"

    def setup(self, trainer: Trainer) -> None:
        self.start = start_step(trainer, self.params.start_fraction)

    def first_iterate(self, trainer: Trainer) -> int:
        """Every epoch ends by the end of the run, so its first snapshot is the start step's; with
        ``cycle_steps``, the first multiple of it from the start step on."""
        start, cycle = start_step(trainer, self.params.start_fraction), self.params.cycle_steps
        return start if cycle is None else -(-start // cycle) * cycle

    def _snapshot(self, trainer: Trainer) -> None:
        if trainer.step >= self.start and trainer.step != self.last_step:
            self.fold(trainer.step)

    def on_step_end(self, trainer: Trainer) -> None:
        cycle = self.params.cycle_steps
        if cycle is not None and trainer.step % cycle == 0:
            self._snapshot(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.params.cycle_steps is None:
            self._snapshot(trainer)
