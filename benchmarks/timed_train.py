"""Timed kdlab training on synthetic data, shared by the benchmark scripts that drive the Trainer.

``synthetic_tree`` writes the run config of a short step-based run on synthetic 32x32 images (one epoch
of exactly the steps to time, no validation split, evaluation only at the end); ``timed_train`` runs it
through ``kdlab.run.train`` with a callback that marks the end of every training step (wall clock, CPU
time, and the peak memory so far). Evaluation after the last step is outside the marks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import benchlib


def synthetic_tree(*, student: str, teacher: str | None, method: dict[str, Any], num_classes: int,
                   batch_size: int, total_steps: int, optim: dict[str, Any], precision: str = "auto",
                   channels_last: bool = True, device: str = "cpu", seed: int = 0,
                   stage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run config of ``total_steps`` steps: one epoch of synthetic data, constant learning rate.

    ``stage``, when given, is one stage of a multi-stage plan (its weights, frozen modules, optimizer
    and schedule changes) run alone for all ``total_steps`` steps, whatever its own budget.
    """
    tree: dict[str, Any] = {
        "data": {
            "name": "synthetic",
            "batch_size": batch_size,
            "val_fraction": 0.0,
            "options": {"num_classes": num_classes, "num_train": batch_size * total_steps, "num_test": 64},
        },
        "student": {"name": student},
        "method": method,
        "optim": optim,
        "schedule": {"name": "constant"},
        "train": {
            "steps": total_steps,
            "eval_every": total_steps,
            "precision": precision,
            "channels_last": channels_last,
            "device": device,
            "seed": seed,
        },
    }
    if teacher is not None:
        tree["teacher"] = {"name": teacher}
    if stage is not None:
        budget = {key: value for key, value in stage.items() if key not in ("epochs", "steps", "eval_every")}
        tree["stages"] = [{**budget, "steps": total_steps}]
        tree["train"]["steps"] = None
    return tree


@dataclass
class TimedRun:
    """Per-step marks of a finished run, the peak memory (MiB) at each step's end, and its summary.

    ``baseline_rss_mib`` is the process's resident set size once torch and kdlab were imported, before
    anything of the run was built. ``peak_mib`` is ``kdlab.engine.trainer.peak_memory_mb``: the peak
    resident set size on CPU, the peak allocated memory on CUDA.
    """

    marks: list[tuple[float, float]]
    peak_mib: list[float]
    baseline_rss_mib: float
    summary: dict[str, Any] = field(default_factory=dict)


def timed_train(tree: dict[str, Any], **train_kwargs: Any) -> TimedRun:
    """Validate ``tree``, train it without a run directory, and return the step marks.

    ``train_kwargs`` go to ``kdlab.run.train`` (e.g. ``student=``/``teacher=`` modules). Raises when
    the Trainer ran another number of steps than the config's budget.
    """
    from kdlab.config import validate
    from kdlab.engine import Callback
    from kdlab.engine.trainer import peak_memory_mb
    from kdlab.run import train

    class StepClock(Callback):
        name = "step_clock"

        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []
            self.peaks: list[float] = []

        def on_step_end(self, trainer) -> None:
            self.marks.append(benchlib.mark())
            self.peaks.append(peak_memory_mb(trainer.device))

    baseline = benchlib.current_rss_mib()
    config = validate(tree, "benchmark")
    expected = sum(s.steps or 0 for s in config.stages) if config.stages else config.train.steps
    clock = StepClock()
    result = train(config, callbacks=[clock], write=False, **train_kwargs)
    if len(clock.marks) != expected:
        raise RuntimeError(f"expected {expected} steps, the Trainer ran {len(clock.marks)}")
    return TimedRun(clock.marks, clock.peaks, baseline, result.summary)
