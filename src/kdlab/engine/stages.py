"""The stage plan: one or more stages, each with its own budget, optimizer, schedule, loss weights and
frozen modules, run one after another by the same Trainer.

A run without ``stages`` is one stage built from the top-level ``train``/``optim``/``schedule``. Step
``s`` of the run belongs to the stage whose range contains it; each stage starts a fresh pass over the
data, so the data epoch of every step is a pure function of the plan (which keeps resume exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from kdlab.config.load import ConfigError, explain
from kdlab.config.schema import OptimConfig, RunConfig, ScheduleConfig, StageConfig


@dataclass(frozen=True)
class Stage:
    name: str
    optim: OptimConfig
    schedule: ScheduleConfig
    epochs: int | None = None
    steps: int | None = None
    weights: dict[str, float] | None = None
    freeze: tuple[str, ...] = ()
    train_only: tuple[str, ...] | None = None
    eval_every: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def step_based(self) -> bool:
        return self.steps is not None

    def num_steps(self, steps_per_epoch: int) -> int:
        return self.steps if self.steps is not None else self.epochs * steps_per_epoch


def _merged(section: BaseModel, changes: dict, model: type[BaseModel], key: str) -> BaseModel:
    try:
        return model.model_validate({**section.model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(explain(exc, "config", model, prefix=f"{key}.")) from None


def plan_stages(config: RunConfig, default: Sequence[StageConfig] | None = None) -> list[Stage]:
    """The stages of a run config, with each stage's optim and schedule merged over the top level.

    ``default`` is the method's own plan (``Distiller.default_stages``), used when the config lists no
    stages; without either, the run is one stage from ``train``.
    """
    stages = config.stages or list(default or ())
    if not stages:
        return [Stage("train", config.optim, config.schedule, config.train.epochs, config.train.steps)]
    return [
        Stage(
            name=s.name,
            optim=_merged(config.optim, s.optim, OptimConfig, f"stages.{i}.optim"),
            schedule=_merged(config.schedule, s.schedule, ScheduleConfig, f"stages.{i}.schedule"),
            epochs=s.epochs,
            steps=s.steps,
            weights=dict(s.weights) or None,
            freeze=tuple(s.freeze),
            train_only=None if s.train_only is None else tuple(s.train_only),
            eval_every=s.eval_every,
            params=dict(s.params),
        )
        for i, s in enumerate(stages)
    ]


@dataclass(frozen=True)
class StageClock:
    """Maps a global step to (stage index, step within the stage, data epoch, batch within epoch)."""

    stages: Sequence[Stage]
    steps_per_epoch: int

    @property
    def starts(self) -> list[int]:
        starts, total = [], 0
        for stage in self.stages:
            starts.append(total)
            total += stage.num_steps(self.steps_per_epoch)
        return starts

    @property
    def total_steps(self) -> int:
        return sum(stage.num_steps(self.steps_per_epoch) for stage in self.stages)

    def stage_of(self, step: int) -> int:
        """The stage that step ``step`` (0-based, the next one to run) belongs to; the last at the end."""
        index = 0
        for i, start in enumerate(self.starts):
            if step >= start:
                index = i
        return index

    def end_of(self, index: int) -> int:
        return self.starts[index] + self.stages[index].num_steps(self.steps_per_epoch)

    def data_epoch(self, step: int) -> tuple[int, int]:
        """(data epoch, batches to skip in it) for the next step; each stage starts a new epoch."""
        index = self.stage_of(step)
        offset = sum(math.ceil(s.num_steps(self.steps_per_epoch) / self.steps_per_epoch)
                     for s in self.stages[:index])
        epoch, skip = divmod(step - self.starts[index], self.steps_per_epoch)
        return offset + epoch, skip
