"""The interface shared by the weight-averaging strategies, and their registry.

A strategy is a Trainer :class:`~kdlab.engine.callbacks.Callback`, so it works with any method. It
keeps an averaged copy of the student (:class:`~kdlab.engine.averaging.weights.AveragedModel`) that
it updates in place from ``on_step_end`` / ``on_epoch_end``, and contributes it to every evaluation
under the name ``"averaged"``; the run layer then selects on that model, so ``best.pt`` and
``summary.json`` report it. Before the first iterate is averaged the averaged model equals the
online student. Its state (weights, counters, strategy bookkeeping) is saved in ``last.pt`` and
restored on resume.

Each strategy says which of the run's two test numbers is its result (``report``): ``"last"`` (the
final average: SWA, EMA, SWAD, WAKD) or ``"selected"`` (the averaged snapshot with the best
validation score: SMA, as in Arpit et al., 2022), and whether it reads validation data at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel
from torch import nn

from kdlab.core.errors import ConfigError
from kdlab.core.registry import Registry
from kdlab.data.batch import BatchSource
from kdlab.engine.averaging.bn import batchnorm_layers, independent_batches, recalibrate_bn
from kdlab.engine.averaging.weights import AveragedModel, BufferPolicy
from kdlab.engine.callbacks import Callback
from kdlab.engine.selection import ResultSelection
from kdlab.models.batchnorm import is_frozen_batchnorm

if TYPE_CHECKING:
    from kdlab.engine.trainer import Trainer

MODEL_NAME = "averaged"


class AveragingStrategy(Callback):
    """Base class: subclasses set ``Params``, ``report``, ``uses_validation`` and implement ``on_step_end``
    (or ``on_epoch_end``), calling :meth:`fold` / :meth:`ema` to update the average.

    ``buffers`` is the BatchNorm policy (see :mod:`kdlab.engine.averaging.bn`); with
    ``"recalibrate"`` the averaged model's statistics are re-estimated over ``bn_batches`` batches of
    ``bn_source`` (the training data) before it is evaluated, whenever it changed since.
    """

    name = "averaging"
    key: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]]
    report: ClassVar[Literal["last", "selected"]] = "last"
    uses_validation: ClassVar[bool] = False

    def __init__(self, params: BaseModel, *, buffers: BufferPolicy = "average", bn_batches: int = 100,
                 bn_source: BatchSource | None = None) -> None:
        if buffers == "recalibrate" and bn_source is None:
            raise ValueError("averaging.buffers='recalibrate' needs training batches (bn_source)")
        self.params = params
        self.buffers = buffers
        self.bn_batches = bn_batches
        self.bn_source = bn_source
        self.average: AveragedModel | None = None
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.iterates = 0
        self._version = 0
        self._calibrated = -1
        self._pending: dict[str, Any] | None = None

    # ------------------------------------------------------------------ for strategies
    def fold(self, step: int, weight: float = 1.0) -> None:
        """Add the student's current weights (iterate ``step``) to the uniform average."""
        self.average.add(weight)
        self._record(step)

    def ema(self, step: int, decay: float) -> None:
        """Exponential moving average update with the student's current weights."""
        self.average.ema(decay)
        self._record(step)

    def _record(self, step: int) -> None:
        if self.first_step is None:
            self.first_step = step
        self.last_step = step
        self.iterates += 1
        self._version += 1

    def prepare(self, trainer: Trainer) -> None:
        """Bring the averaged model up to date before it is evaluated or saved (SWAD assembles here)."""
        if self.iterates == 0:
            self.average.track_online()
            self._version += 1

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None: ...

    def setup(self, trainer: Trainer) -> None:
        """Called once the averaged copy exists (after any move to the device), before training."""

    def describe_extra(self) -> dict[str, Any]:
        return {}

    def first_iterate(self, trainer: Trainer) -> int | None:
        """The first step this strategy will average in a run of ``trainer.total_steps`` steps, or
        None where that depends on the run itself (SWAD's validation loss)."""
        return None

    def check(self, trainer: Trainer) -> None:
        """Refuse a strategy whose first averaged step lies past the end of the run: its "average"
        would only be the online student."""
        first = self.first_iterate(trainer)
        if first is not None and first > trainer.total_steps:
            raise ConfigError(f"averaging.params: {self.key} would average nothing: its first averaged "
                              f"step is {first}, after the run's last step {trainer.total_steps}; start it "
                              "earlier or train longer")

    # ------------------------------------------------------------------ callback hooks
    def on_fit_start(self, trainer: Trainer) -> None:
        layers = batchnorm_layers(trainer.distiller.student)
        if self.buffers == "recalibrate" and any(is_frozen_batchnorm(m) for m in layers):
            raise ConfigError("averaging.buffers: 'recalibrate' re-estimates BatchNorm statistics, but "
                              "student.freeze_bn keeps them fixed; use 'average'")
        if self.buffers == "recalibrate" and not layers:
            self.buffers = "average"
        self.average = AveragedModel(trainer.distiller.student, self.buffers)
        self.setup(trainer)
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None

    def selection(self) -> ResultSelection:
        """The averaged model is the run's result: its final average (``report: last``) or its best
        validated snapshot (``report: selected``)."""
        return ResultSelection(MODEL_NAME, self.report)

    def eval_models(self, trainer: Trainer) -> dict[str, nn.Module]:
        if self.average is None:
            return {}
        self.prepare(trainer)
        if self.buffers == "recalibrate" and self._calibrated != self._version:
            recalibrate_bn(self.average.module, independent_batches(self.bn_source), self.bn_batches,
                           trainer.precision, trainer.memory_format)
            self._calibrated = self._version
        return {MODEL_NAME: self.average.module}

    def state_dict(self) -> dict[str, Any]:
        if self.average is None:
            return {}
        return {
            "model": self.average.module.state_dict(),
            "total": self.average.mean.total,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "iterates": self.iterates,
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._pending = state

    def _restore(self, state: dict[str, Any]) -> None:
        self.average.module.load_state_dict(state["model"])
        self.average.mean.total = state["total"]
        self.first_step, self.last_step = state["first_step"], state["last_step"]
        self.iterates = state["iterates"]
        self._version += 1
        self.load_extra_state(state)

    def describe(self) -> dict[str, Any]:
        """What ``summary.json`` records about the average (``report`` names the result's test key)."""
        return {
            "strategy": self.key,
            "report": f"test_{self.report}",
            "uses_validation": self.uses_validation,
            "params": self.params.model_dump(),
            "buffers": self.buffers,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "iterates": self.iterates,
            **self.describe_extra(),
        }


STRATEGIES: Registry[type[AveragingStrategy]] = Registry("averaging strategy")


def register_strategy(name: str):
    """Class decorator registering a strategy under ``name`` (the ``averaging.strategy`` value)."""

    def add(cls: type[AveragingStrategy]) -> type[AveragingStrategy]:
        cls.key = name
        return STRATEGIES.register(name)(cls)

    return add


def start_step(trainer: Trainer, fraction: float) -> int:
    """The first averaged step when averaging starts at ``fraction`` of the run's step budget."""
    return max(1, round(fraction * trainer.total_steps))
