"""Leave-one-domain-out results (``kdlab dg``) as DomainBed's table: configs x target domains.

Each cell is the reported test accuracy on the target domain, mean ± standard error over seeds
(DomainBed's convention, population std / sqrt(n); a cell of one seed shows its value alone), and the
last column the mean over targets (only when every target has runs). A config whose result is not the
online student (a weight average) gets a second row with the online student's accuracy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.core.errors import ConfigError
from kdlab.data.domains import DOMAIN_SETS
from kdlab.report.results import metric, ordered


def mean_err(values: Sequence[float]) -> str:
    """``mean ± standard error``, or the mean alone for one value (its spread is undefined)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    err = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values) / len(values))
    return f"{mean:.1f} ± {err:.1f}"


def _row(label: str, lines: Sequence[dict[str, Any]], split: str, targets: Sequence[str]) -> list[str]:
    cells, means = [], []
    for target in targets:
        values = [v for x in lines if x["target_name"] == target and (v := metric(x, split)) is not None]
        cells.append(mean_err(values) if values else "-")
        if values:
            means.append(sum(values) / len(values))
    return [label, *cells, f"{sum(means) / len(means):.1f}" if len(means) == len(targets) else "-"]


def table(lines: Sequence[dict[str, Any]], targets: Sequence[str]) -> str:
    """The markdown table of ``lines`` (one dataset's) over ``targets`` (domain names, in order)."""
    header = ["Config", *targets, "Avg"]
    rows = []
    for label in ordered(line["config"] for line in lines):
        runs = [x for x in lines if x["config"] == label]
        rows.append(_row(label, runs, "test", targets))
        online = [x for x in runs if metric(x, "online_test_last") is not None]
        if online:
            rows.append(_row(f"{label} (online student)", online, "online_test_last", targets))
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def domain_tables(lines: Sequence[dict[str, Any]]) -> str:
    """One titled table per dataset of ``lines`` (``kdlab dg`` results), targets in the dataset's order."""
    parts = []
    for dataset in ordered(line["dataset"] for line in lines):
        shown = [line for line in lines if line["dataset"] == dataset]
        spec = DOMAIN_SETS.get(dataset)
        targets = [spec.domains[t] for t in sorted({line["target"] for line in shown})]
        seeds = sorted({line["seed"] for line in shown if line["config"] != "teacher"})
        splits = sorted({line["split_seed"] for line in shown if line.get("split_seed") is not None})
        parts.append(f"{spec.title}, leave-one-domain-out, training-domain validation; test accuracy (%) "
                     f"on the target domain, mean ± standard error over seeds {seeds} (in/out split seeds "
                     f"{splits}; a single seed's value has no spread)\n\n{table(shown, targets)}\n")
    return "\n".join(parts)


def write_domain_tables(lines: Sequence[dict[str, Any]], path: Path) -> str:
    """Write :func:`domain_tables` of ``lines`` to ``path`` (atomically); returns the text."""
    if not lines:
        raise ConfigError(f"{path.parent}: no finished dg runs to tabulate")
    text = domain_tables(lines)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return text
