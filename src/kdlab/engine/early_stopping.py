"""Early stopping on a validation metric: the run ends once the result's model has gone ``patience``
evaluations (in the final stage) without improving its metric by more than ``min_delta``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdlab.config.schema import EarlyStoppingConfig
from kdlab.core.errors import ConfigError
from kdlab.engine.callbacks import Callback

if TYPE_CHECKING:
    from kdlab.engine.trainer import Trainer


def improves(metric: str, value: float, best: float | None, min_delta: float) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (top-1 up, NLL and ECE down)."""
    if best is None:
        return True
    return value > best + min_delta if metric == "top1" else value < best - min_delta


class EarlyStopping(Callback):
    """Stops the trainer after ``patience`` evaluations without improvement; resumable."""

    name = "early_stopping"

    def __init__(self, config: EarlyStoppingConfig, metric: str) -> None:
        self.config = config
        self.metric = config.metric or metric
        self.best: float | None = None
        self.waited = 0
        self.stopped_at: int | None = None

    def check(self, trainer: Trainer) -> None:
        if trainer.val_data is None:
            raise ConfigError("train.early_stopping: needs a validation split; set data.val_fraction > 0")

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.stopped_at is not None:
            trainer.should_stop = True

    def on_evaluate(self, trainer: Trainer, results: dict[str, dict[str, float]]) -> None:
        model = trainer.selection.model
        if model not in results or trainer.stage_index != len(trainer.stages) - 1:
            return
        value = results[model][self.metric]
        if improves(self.metric, value, self.best, self.config.min_delta):
            self.best, self.waited = value, 0
            return
        self.waited += 1
        if self.waited >= self.config.patience:
            self.stopped_at = trainer.step
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.best, self.waited, self.stopped_at = state["best"], state["waited"], state["stopped_at"]

    def describe(self) -> dict[str, Any]:
        return {"metric": self.metric, "patience": self.config.patience, "min_delta": self.config.min_delta,
                "best": self.best, "stopped_at_step": self.stopped_at}
