"""Trainer callbacks: the hook points for weight averaging, logging and early stopping.

A callback sees the trainer at fixed points of the loop. It may add models to every evaluation
(``eval_models``; an averaged model, say), ask the trainer to stop (``trainer.should_stop = True``)
and keep state across resume (``state_dict`` / ``load_state_dict``, stored in ``last.pt``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from kdlab.engine.selection import ResultSelection

if TYPE_CHECKING:
    from kdlab.engine.trainer import Trainer


class Callback:
    """Base class; every hook is optional."""

    name = "callback"

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_stage_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer) -> None: ...

    def on_evaluate(self, trainer: Trainer, results: dict[str, dict[str, float]]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def eval_models(self, trainer: Trainer) -> dict[str, nn.Module]:
        """Extra models evaluated beside the online student, by name."""
        return {}

    def check(self, trainer: Trainer) -> None:
        """Refuse, with a ``ConfigError``, a run this callback cannot serve (called once the trainer is
        built, before anything is written)."""

    def describe(self) -> dict[str, Any] | None:
        """What the run's ``summary.json`` records under this callback's ``name`` (None: nothing)."""
        return None

    def selection(self) -> ResultSelection | None:
        """The run's result when it is one of this callback's models (None: not decided here)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
