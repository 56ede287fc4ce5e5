"""Gradient accumulation (``train.accumulate_grad_batches = k``): one optimizer step per group of k batches.

Each epoch's ``n`` batches are cut into groups of ``k`` from its first batch; when ``n`` is not a multiple
of ``k`` the last group holds the ``n mod k`` batches left and still steps (as PyTorch Lightning does). A
batch's loss is divided by the size of its group, so a step's gradient is the mean of the group's batch
losses: for whole groups the gradient of one batch of ``k * batch_size`` samples (training batches are
all whole), for the short last group the mean over its own samples. An epoch is ``ceil(n / k)``
optimizer steps, and every step count of a run (budgets, schedules and warm-up, logging, evaluation,
checkpoints, averaging, early stopping) counts optimizer steps; a checkpoint is only ever written
between groups, so resume is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Accumulation:
    """How ``batches_per_epoch`` batches group into optimizer steps of ``every`` batches."""

    batches_per_epoch: int
    every: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.every)

    def group(self, index: int) -> tuple[int, int]:
        """(position in its group, size of the group) of batch ``index`` (0-based) of an epoch."""
        position = index % self.every
        return position, min(self.every, self.batches_per_epoch - (index - position))

    def first_batch(self, step_in_epoch: int) -> int:
        """The batch of an epoch that its optimizer step ``step_in_epoch`` (0-based) starts with."""
        return step_in_epoch * self.every
