"""Run logging: one JSON object per line in ``metrics.jsonl``, optional TensorBoard, all on rank 0.

The log always matches the run's checkpoint: when a run starts or resumes (:meth:`MetricsLogger.begin`)
the records past the checkpoint's step are dropped (a fresh start keeps none), and so is a torn last
line of a process killed mid-write, so nothing is logged twice and the next record starts a fresh line.
Readers skip a torn line too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from kdlab.core.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
#: the run's TensorBoard directory, under RUN_DIR
TB_DIR = "tb"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def parse_records(text: str) -> list[dict[str, Any]]:
    """The complete, well-formed records of a ``metrics.jsonl`` text; a torn or garbled line is skipped."""
    records = []
    for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def scalar_tags(kind: str, values: dict[str, Any]) -> dict[str, float]:
    """TensorBoard tags of one record's numbers: ``KIND/KEY``, or ``eval/MODEL/KEY`` for an evaluation,
    so that each evaluated model (student, peer, averaged) has its own curve."""
    model = values.get("model")
    prefix = f"{kind}/{model}" if kind == "eval" and isinstance(model, str) else kind
    return {f"{prefix}/{key}": value for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class MetricsLogger:
    """Appends records to ``RUN_DIR/metrics.jsonl``; a ``None`` directory logs nowhere."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = False) -> None:
        self.path = run_dir / METRICS_FILE if run_dir is not None else None
        self._tb = None
        if tensorboard and run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("train.tensorboard needs tensorboard: pip install 'kdlab[tb]'") from None

            self._tb = SummaryWriter(str(run_dir / TB_DIR))

    def begin(self, step: int) -> None:
        """Make the log that of a run at ``step``: keep the complete records up to ``step`` (none at
        step 0), rewritten atomically when anything was dropped."""
        if self.path is None or not self.path.is_file():
            return
        text = self.path.read_text(errors="replace")
        kept = [r for r in parse_records(text) if step > 0 and _step(r) <= step]
        lines = "".join(json.dumps(r) + "\n" for r in kept)
        if lines == text:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(lines)
        os.replace(tmp, self.path)

    def log(self, kind: str, step: int, **values: Any) -> None:
        if self.path is None:
            return
        record = {"kind": kind, "step": step, **{k: _clean(v) for k, v in values.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for tag, value in scalar_tags(kind, values).items():
                self._tb.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _step(record: dict[str, Any]) -> int:
    step = record.get("step")
    return step if isinstance(step, int) else 0


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` ([] when it has none), skipping a torn or garbled line."""
    path = Path(run_dir) / METRICS_FILE
    return parse_records(path.read_text(errors="replace")) if path.is_file() else []
