"""``RUN_DIR/summary.csv``: one row per evaluation, the table timm users read, derived from
``metrics.jsonl`` (so a resumed run's table holds exactly what its log holds)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from kdlab.core.checkpoint import write_text_atomic
from kdlab.engine.logger import read_metrics

SUMMARY_FILE = "summary.csv"
LEADING = ("step", "epoch", "stage", "lr", "train_loss")
SKIPPED = ("kind", "step", "stage", "split", "model", "epoch", "n", "per_class_top1")


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluated step: the latest training record's lr and loss at or before it, then each
    evaluated model's scalar metrics as ``<model>_<metric>`` (``student_top1``, ``averaged_nll``)."""
    rows: dict[int, dict[str, Any]] = {}
    last_train: dict[str, Any] = {}
    for record in records:
        if record.get("kind") == "train":
            last_train = record
        elif record.get("kind") == "eval" and record.get("split") == "val":
            row = rows.setdefault(record["step"], {
                "step": record["step"], "epoch": record.get("epoch"), "stage": record.get("stage"),
                "lr": last_train.get("lr"), "train_loss": last_train.get("loss")})
            for key, value in record.items():
                if key not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                    row[f"{record.get('model')}_{key}"] = value
    return list(rows.values())


def write_summary_csv(run_dir: Path) -> None:
    """Rewrite ``RUN_DIR/summary.csv`` (atomically) from the run's ``metrics.jsonl``."""
    rows = summary_rows(read_metrics(run_dir))
    if not rows:
        return
    columns = list(LEADING) + sorted({key for row in rows for key in row} - set(LEADING))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run_dir / SUMMARY_FILE, text.getvalue())
