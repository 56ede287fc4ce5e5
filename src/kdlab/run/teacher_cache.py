"""A run that replays a teacher cache instead of running its teacher."""

from __future__ import annotations

from typing import Any

import torch

from kdlab.config.schema import RunConfig
from kdlab.data import DataBundle
from kdlab.engine import Callback, Trainer
from kdlab.methods import Distiller
from kdlab.teacher_cache import TeacherCacheReplay, run_signature


class CacheReport(Callback):
    """Records in the run's summary which cache was replayed and whether it cycled."""

    name = "teacher_cache"

    def __init__(self, replay: TeacherCacheReplay) -> None:
        self.replay = replay
        self.epochs = 0.0

    def on_fit_end(self, trainer: Trainer) -> None:
        self.epochs = trainer.epoch

    def describe(self) -> dict[str, Any]:
        return self.replay.describe(self.epochs)


def attach_teacher_cache(config: RunConfig, data: DataBundle, distiller: Distiller,
                         device: torch.device) -> TeacherCacheReplay | None:
    """With ``teacher_cache`` set, make the training source replay the cache (checked against the run)."""
    if config.teacher_cache is None:
        return None
    cache = config.teacher_cache
    signature = run_signature(config, data, distiller)
    replay = TeacherCacheReplay(cache.path, device, cycle=cache.cycle, features=cache.features)
    replay.check(signature)
    data.train.set_replay(replay)
    return replay
