"""The dense uniform average from a start step to the end of training, shared by SMA and WAKD:

    theta_bar_t = (1 / (t - s + 1)) * sum_{i=s..t} theta_i,   kept as theta_bar += (theta_t - theta_bar) / n

Every optimizer step from ``s`` on is folded in exactly once, in place on the training device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdlab.engine.averaging.base import AveragingStrategy

if TYPE_CHECKING:
    from kdlab.engine.trainer import Trainer


class DenseUniform(AveragingStrategy):
    """Subclasses say where the average starts in :meth:`first_iterate`."""

    start: int = 1

    def setup(self, trainer: Trainer) -> None:
        self.start = self.first_iterate(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step >= self.start:
            self.fold(trainer.step)

    def describe_extra(self) -> dict:
        return {"start_step": self.start}
