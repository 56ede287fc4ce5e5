"""Run logging: one JSON object per line in ``metrics.jsonl``, optional TensorBoard, all on rank 0."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kdlab.core.errors import ConfigError


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Appends records to ``RUN_DIR/metrics.jsonl``; a ``None`` directory logs nowhere."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl" if run_dir is not None else None
        self._tb = None
        if tensorboard and run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("train.tensorboard needs tensorboard: pip install 'kdlab[tb]'") from None

            self._tb = SummaryWriter(str(run_dir / "tb"))

    def log(self, kind: str, step: int, **values: Any) -> None:
        if self.path is None:
            return
        record = {"kind": kind, "step": step, **{k: _clean(v) for k, v in values.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` ([] when it has none); a line that is not a JSON record
    (torn by a kill mid-write) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
