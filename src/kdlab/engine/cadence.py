"""How often a stage evaluates (and checkpoints): ``eval_every`` when set, else a default per budget.

An epoch budget evaluates every epoch. A step budget evaluates about ``EVALUATIONS`` times over the
stage, and at least once per pass over the data: ``train.steps=50`` evaluates every 5 steps, a budget
of many epochs' worth of steps once per epoch.
"""

from __future__ import annotations

import math

from kdlab.engine.stages import Stage

#: evaluations over a step-budget stage when ``eval_every`` is not set
EVALUATIONS = 10


def eval_interval(stage: Stage, default: int | None, steps_per_epoch: int) -> int:
    """Evaluate every this many epochs (epoch budget) or steps (step budget) in ``stage``: the stage's
    ``eval_every``, else ``train.eval_every`` (``default``), else the budget's default."""
    if stage.eval_every is not None:
        return stage.eval_every
    if default is not None:
        return default
    if not stage.step_based:
        return 1
    return max(1, min(steps_per_epoch, math.ceil(stage.steps / EVALUATIONS)))
