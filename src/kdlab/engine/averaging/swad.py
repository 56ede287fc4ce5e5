"""SWAD: Stochastic Weight Averaging Densely (Cha, Chun, Lee, Cho, Park, Lee & Park, NeurIPS 2021),
with the loss-valley rule of the reference code (khanrc/swad ``domainbed/swad.py::LossValley``).

Every optimizer step is folded into the current *segment* average (``nu`` consecutive steps). At the
end of each segment ``k`` the validation loss l_k of the **online** model is computed on held-out
training-domain data (``loss: nll``: cross-entropy, as in SWAD; ``loss: method``: the run's own
weighted training loss on those batches, e.g. the KD loss the WAKD code uses for KD+SWAD). Then:

- **start**: the valley starts at segment k_s when, among the last ``n_converge`` segments, the oldest
  has the lowest loss; the threshold is tau = (1 + tolerance_ratio) * mean of those losses
  (khanrc's convention, ratio 0.3; the WAKD code writes the multiplier 1.3 directly). When
  ``n_tolerance > n_converge``, up to ``n_tolerance - n_converge`` segments just before k_s are
  included too, as long as each of them has l <= tau.
- **continue / stop**: a later segment j is included when min(l_j, ..., l_{j + n_tolerance - 1}) <= tau
  (decided once that loss is known); the first segment failing the test ends the valley and
  **stops training early**; it is not included.
- **end of training** without a dead valley: the undecided segments are included in order while the
  minimum of their remaining losses stays <= tau. If the valley never started, the result is the last
  segment's average (as the reference code does, which logs an error); ``summary.json`` says so.

theta_SWAD is the uniform mean of theta_t over the steps of the included segments, each step exactly
once: segments are folded into the final average weighted by their length, which equals dense
averaging over [t_s, t_e]. Closed segments wait on the CPU (at most max(n_converge, n_tolerance) of
them) until they are decided. Deviations from the reference code, which it does not try to bit-match:
no single-iterate segment at step 0; the start segment is counted once (the reference counts it twice
when ``n_tolerance > n_converge`` and skips the first back-filled segment); segments after k_s are
always decided by the look-ahead rule; the validation loss is the mean over the pooled held-out data
(DomainBed: the mean over domains of each domain's mean loss).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdlab.core import distributed
from kdlab.core.errors import ConfigError
from kdlab.engine.averaging.base import AveragingStrategy, register_strategy
from kdlab.engine.averaging.weights import RunningMean
from kdlab.methods.base import weighted_sum
from kdlab.models.modes import eval_mode

if TYPE_CHECKING:
    from kdlab.engine.trainer import Trainer

log = logging.getLogger("kdlab")


class SWADParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nu: int = Field(100, gt=0, description="steps per segment (the evaluation interval)")
    n_converge: int = Field(3, gt=0, description="N_s: start-detection window, in segments")
    n_tolerance: int = Field(6, gt=0, description="N_e: look-ahead window of the end rule, in segments")
    tolerance_ratio: float = Field(0.3, ge=0.0, description="rho: threshold = (1 + rho) * mean loss")
    loss: Literal["nll", "method"] = "nll"


@dataclass
class LossValley:
    """SWAD's start/stop rule over the sequence of segment losses (segments numbered from 0)."""

    n_converge: int
    n_tolerance: int
    tolerance_ratio: float
    losses: list[float] = field(default_factory=list)
    converged_at: int | None = None
    threshold: float | None = None
    start: int | None = None
    end: int | None = None
    decided: int = 0
    dead: bool = False

    def push(self, loss: float) -> list[int]:
        """Record the loss of the next segment; returns the segments newly included, in order."""
        self.losses.append(float(loss))
        if self.dead:
            return []
        last = len(self.losses) - 1
        included: list[int] = []
        if self.converged_at is None:
            first = last - self.n_converge + 1
            if first < 0:
                return []
            window = self.losses[first:]
            if min(window) < window[0]:
                return []
            self.converged_at = first
            self.threshold = (1.0 + self.tolerance_ratio) * sum(window) / len(window)
            floor = max(0, first - max(0, self.n_tolerance - self.n_converge))
            start = first
            while start > floor and self.losses[start - 1] <= self.threshold:
                start -= 1
            included = list(range(start, first + 1))
            self.start, self.end, self.decided = start, first, first + 1
        while self.decided + self.n_tolerance - 1 <= last:
            j = self.decided
            if min(self.losses[j : j + self.n_tolerance]) > self.threshold:
                self.dead = True
                break
            included.append(j)
            self.end, self.decided = j, j + 1
        return included

    def flush(self) -> list[int]:
        """At the end of training: include undecided segments while their remaining minimum is <= tau."""
        if self.converged_at is None or self.dead:
            return []
        included = []
        while self.decided < len(self.losses) and min(self.losses[self.decided :]) <= self.threshold:
            included.append(self.decided)
            self.end = self.decided
            self.decided += 1
        return included


@dataclass
class Segment:
    index: int
    first: int
    last: int
    tensors: list[Tensor]

    @property
    def steps(self) -> int:
        return self.last - self.first + 1


@register_strategy("swad")
class SWAD(AveragingStrategy):
    Params = SWADParams
    report = "last"
    uses_validation = True

    def setup(self, trainer: Trainer) -> None:
        if trainer.val_data is None:
            raise ConfigError("averaging.strategy=swad needs a validation split: set data.val_fraction > 0")
        self.valley = LossValley(self.params.n_converge, self.params.n_tolerance, self.params.tolerance_ratio)
        self.segment = RunningMean([t.detach().clone() for t in self.average.sources])
        self.segment_first: int | None = None
        self.closed: list[Segment] = []
        self.finished = False
        self.stopped_early_at: int | None = None
        self._shown: int | None = None

    # ------------------------------------------------------------------ the loss
    @torch.no_grad()
    def validation_loss(self, trainer: Trainer) -> float:
        """Mean loss of the online model over the validation split (all ranks)."""
        distiller, data = trainer.distiller, trainer.val_data
        total = torch.zeros(2, dtype=torch.float64, device=trainer.device)
        data.set_epoch(0)
        with eval_mode(distiller):
            for batch in data:
                if batch.inputs.dim() == 4:
                    inputs = batch.inputs.contiguous(memory_format=trainer.memory_format)
                    batch = batch._replace(inputs=inputs)
                count = batch.targets.numel()
                with trainer.precision.autocast():
                    if self.params.loss == "nll":
                        logits = distiller.student(batch.inputs)
                        loss = F.cross_entropy(logits.float(), batch.targets, reduction="sum")
                    else:
                        step = trainer.context or trainer.step_context()
                        loss = weighted_sum(distiller(batch, step).losses, step.weights).float() * count
                total[0] += loss.double()
                total[1] += count
        total = distributed.all_reduce_sum(total)
        return float(total[0] / total[1])

    # ------------------------------------------------------------------ the schedule
    def on_fit_start(self, trainer: Trainer) -> None:
        """As the base class; a run resumed after the valley ended stays stopped."""
        super().on_fit_start(trainer)
        if self.stopped_early_at is not None:
            trainer.should_stop = True

    def on_step_end(self, trainer: Trainer) -> None:
        if self.finished:
            return
        step = trainer.step
        self.segment.add(self.average.sources)
        if self.segment_first is None:
            self.segment_first = step
        at_end = step >= trainer.total_steps
        if step % self.params.nu and not at_end:
            return
        self._close(step, self.validation_loss(trainer))
        if self.valley.dead:
            self.finished = True
            self.stopped_early_at = step
            trainer.should_stop = True
            log.info("SWAD: the loss valley ended at step %d; averaged steps %s..%s; stopping",
                     step, self.first_step, self.last_step)
        elif at_end:
            self._include(self.valley.flush())
            self.finished = True
            if self.valley.converged_at is None:
                log.error("SWAD: the validation loss never converged; the result is the last segment")

    def _close(self, step: int, loss: float) -> None:
        tensors = [t.to("cpu", copy=True) for t in self.segment.targets]
        self.closed.append(Segment(len(self.valley.losses), self.segment_first, step, tensors))
        self.segment.reset()
        self.segment_first = None
        self._include(self.valley.push(loss))
        keep_from = self.valley.decided if self.valley.converged_at is not None else \
            len(self.valley.losses) - max(self.params.n_converge, self.params.n_tolerance)
        self.closed = [s for s in self.closed if s.index >= keep_from or s is self.closed[-1]]

    def _include(self, indices: list[int]) -> None:
        by_index = {s.index: s for s in self.closed}
        device = self.average.sources[0].device
        for index in indices:
            segment = by_index[index]
            self.average.mean.add([t.to(device) for t in segment.tensors], weight=segment.steps)
            self.average.copy_buffers()
            if self.first_step is None:
                self.first_step = segment.first
            self.last_step = segment.last
            self.iterates += segment.steps
            self._version += 1

    def prepare(self, trainer: Trainer) -> None:
        """Before the valley starts, show the last closed segment's average (the online model before that)."""
        if self.iterates:
            return
        if not self.closed:
            self.average.track_online()
            self._version += 1
        elif self._shown != self.closed[-1].index:
            device = self.average.sources[0].device
            self.average.mean.copy_from([t.to(device) for t in self.closed[-1].tensors])
            self._shown = self.closed[-1].index
            self._version += 1

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {
            "valley": asdict(self.valley),
            "segment": self.segment.targets,
            "segment_total": self.segment.total,
            "segment_first": self.segment_first,
            "closed": [asdict(s) for s in self.closed],
            "finished": self.finished,
            "stopped_early_at": self.stopped_early_at,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.valley = LossValley(**state["valley"])
        self.segment.copy_from(state["segment"])
        self.segment.total = state["segment_total"]
        self.segment_first = state["segment_first"]
        self.closed = [Segment(**s) for s in state["closed"]]
        self.finished = state["finished"]
        self.stopped_early_at = state["stopped_early_at"]

    def describe_extra(self) -> dict[str, Any]:
        v = self.valley
        return {
            "converged": v.converged_at is not None,
            "valley_segments": None if v.start is None else [v.start, v.end],
            "threshold": v.threshold,
            "dead_valley": v.dead,
            "stopped_early_at": self.stopped_early_at,
            "segment_losses": [round(x, 6) for x in v.losses],
        }
