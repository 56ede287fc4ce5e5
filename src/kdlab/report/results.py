"""Reading a protocol's ``results.jsonl`` (the format of :mod:`kdlab.protocols.result_line`, or an
earlier kdlab's lines, upgraded) and aggregating it over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.core.errors import ConfigError
from kdlab.protocols.records import RESULTS, read_results
from kdlab.protocols.result_line import FORMAT, upgrade


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of ``n`` values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat | None:
        kept = [v for v in values if v is not None and math.isfinite(v)]
        if not kept:
            return None
        return cls(statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0, len(kept))


def results_path(location: str | Path) -> Path:
    """``location`` itself when it is a file, else ``location/results.jsonl``."""
    path = Path(location)
    path = path if path.is_file() else path / RESULTS
    if not path.is_file():
        raise ConfigError(f"{path}: no results file (run kdlab study first, or pass a results.jsonl)")
    return path


def load_results(location: str | Path) -> list[dict[str, Any]]:
    """The records of a results file in the current format, keeping the last line of each run id."""
    path = results_path(location)
    records = {}
    for number, line in enumerate(read_results(path), 1):
        record = upgrade(line)
        if record is None:
            raise ConfigError(f"{path}: line {number} is not a results line this kdlab reads (format "
                              f"{line.get('format')!r}; it reads {FORMAT} and the earlier unversioned "
                              "lines); report it with the kdlab that wrote it")
        records[record["id"]] = record
    return list(records.values())


def split_metrics(record: dict[str, Any], split: str) -> dict[str, Any]:
    """The metrics of one evaluated split (``test``: the reported test split)."""
    values = record.get("test") if split == "test" else (record.get("metrics") or {}).get(split)
    return values if isinstance(values, dict) else {}


def metric(record: dict[str, Any], split: str, key: str = "top1") -> float | None:
    value = split_metrics(record, split).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def ordered(values: Iterable[Any]) -> list[Any]:
    """Distinct values in first-seen order."""
    return list(dict.fromkeys(values))


def select(records: Sequence[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def per_class_mean(records: Sequence[dict[str, Any]], split: str) -> list[float] | None:
    """The mean over records (seeds) of each class's top-1; None when no record has per-class values."""
    rows = [split_metrics(r, split).get("per_class_top1") for r in records]
    rows = [row for row in rows if row]
    if not rows:
        return None
    return [statistics.fmean(v for v in column if v is not None) if any(v is not None for v in column)
            else math.nan for column in zip(*rows, strict=True)]
