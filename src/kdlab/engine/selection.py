"""Which model is a run's result, and which of its test figures the run reports: decided in one place.

A run's result is one evaluated model (``model``: the student, a method's deployable model such as a
BatchEnsemble student's merged network, or a callback's model such as a weight average) in one of two
states (``report``): ``"selected"``, its weights at the best validation score (``best.pt``), or
``"last"``, its weights when training ended (for a callback's model: ``averaged.pt``, written when
training ends). The trainer tracks ``best.pt`` for that model; the summary reports its ``test_last``
and ``test_selected`` and names the result's key and file; a run directory given where a checkpoint
is expected (``teacher.checkpoint``, ``kdlab eval``, ``kdlab export``) means that file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

#: the file holding the final state of a callback's result model (a weight average)
FINAL_MODEL_FILE = "averaged.pt"
#: the files a run directory can mean, in the order an unfinished run (no summary yet) is read
RUN_CHECKPOINTS = (FINAL_MODEL_FILE, "best.pt", "last.pt")


@dataclass(frozen=True)
class ResultSelection:
    """The evaluated model that is a run's result, and whether its result is its validation-selected
    (``"selected"``) or its final (``"last"``) state."""

    model: str = "student"
    report: Literal["selected", "last"] = "selected"

    @property
    def result_key(self) -> str:
        """The summary key of the result's test metrics."""
        return f"test_{self.report}"

    @property
    def writes_final_model(self) -> bool:
        """Whether the result is a final state that no other file holds (not the online student's)."""
        return self.report == "last" and self.model != "student"

    def result_name(self, run_dir: Path) -> str:
        """The file of ``run_dir`` that holds the result once training has ended."""
        if self.writes_final_model:
            return FINAL_MODEL_FILE
        return "best.pt" if self.report == "selected" and (run_dir / "best.pt").is_file() else "last.pt"


class SelectingCallback(Protocol):
    def selection(self) -> ResultSelection | None: ...


def choose_selection(method_model: str, callbacks: Iterable[SelectingCallback]) -> ResultSelection:
    """The first callback's selection (an averaging strategy's averaged model), else the method's
    deployable model, selected on validation."""
    for callback in callbacks:
        chosen = callback.selection()
        if chosen is not None:
            return chosen
    return ResultSelection(method_model)


def result_file(run_dir: Path) -> Path | None:
    """The checkpoint a run directory means: the one its ``summary.json`` names, or, for a run without
    a readable summary (unfinished), the first of ``RUN_CHECKPOINTS`` it holds; None when it holds none."""
    try:
        named = json.loads((run_dir / "summary.json").read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        named = None
    if isinstance(named, str) and (run_dir / named).is_file():
        return run_dir / named
    return next((run_dir / name for name in RUN_CHECKPOINTS if (run_dir / name).is_file()), None)
