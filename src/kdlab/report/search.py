"""Selecting among a study's hyper-parameter draws (:mod:`kdlab.protocols.search`), on validation only.

Per grid cell (pair, condition, method) with several draws, the selected draw is the one whose mean
validation top-1 over seeds is highest (ties: the lowest draw). The validation figure is the one that
goes with the reported test split: for ``test_selected`` the validation top-1 of the selected checkpoint
(``result.selected`` when it selected on top-1), for ``test_last`` the last validation top-1. Test
figures are reported for the selected draw, and as the spread over draws, but never used to select.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kdlab.report.results import Stat, metric, ordered, select
from kdlab.report.tables import fmt, markdown_table

Cell = tuple[str, str, str]


def validation_score(record: dict[str, Any], split: str) -> float | None:
    """The validation top-1 that goes with the test ``split`` of ``record``."""
    chosen = (record.get("result") or {}).get("selected") or {}
    if split == "test_selected" and chosen.get("metric") == "top1" and chosen.get("value") is not None:
        return float(chosen["value"])
    return metric(record, "val_last")


@dataclass(frozen=True)
class Selection:
    """The selected draw of one cell, its values and figures, and the spread of the draws' means."""

    draw: int
    values: dict[str, Any]
    val: Stat
    test: Stat | None
    draws: int
    val_range: tuple[float, float]
    test_range: tuple[float, float] | None


def cell_of(record: dict[str, Any]) -> Cell:
    return record["pair"], record["condition"], record["method"]


def searched_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("role") == "student" and r.get("draw") is not None]


def select_draws(records: Sequence[dict[str, Any]], split: str) -> dict[Cell, Selection]:
    """The selected draw of every searched cell (cells whose draws have no validation figure: none)."""
    chosen = {}
    runs = searched_records(records)
    for cell in ordered(cell_of(r) for r in runs):
        in_cell = [r for r in runs if cell_of(r) == cell]
        by_draw = {d: [r for r in in_cell if r["draw"] == d] for d in sorted({r["draw"] for r in in_cell})}
        vals = {d: Stat.of(validation_score(r, split) for r in rs) for d, rs in by_draw.items()}
        tests = {d: Stat.of(metric(r, split) for r in rs) for d, rs in by_draw.items()}
        scored = {d: s for d, s in vals.items() if s is not None}
        if not scored:
            continue
        best = max(scored, key=lambda d: (scored[d].mean, -d))
        val_means = [s.mean for s in scored.values()]
        test_means = [s.mean for s in tests.values() if s is not None]
        values = dict(by_draw[best][0].get("searched") or {})
        chosen[cell] = Selection(best, values, scored[best], tests[best], len(by_draw),
                                 (min(val_means), max(val_means)),
                                 (min(test_means), max(test_means)) if test_means else None)
    return chosen


def keep_selected(records: Sequence[dict[str, Any]], chosen: dict[Cell, Selection]) -> list[dict[str, Any]]:
    """``records`` without the draws that were not selected (the other tables then show each cell once)."""
    return [r for r in records if r.get("draw") is None or r.get("role") != "student"
            or (cell_of(r) in chosen and chosen[cell_of(r)].draw == r["draw"])]


def _values(values: dict[str, Any]) -> str:
    shown = [f"{key.split('.')[-1]}={'default' if v is None else f'{v:g}' if isinstance(v, float) else v}"
             for key, v in values.items()]
    return ", ".join(shown) or "defaults"


def search_table(chosen: dict[Cell, Selection], pair: str) -> str:
    """One row per searched cell of ``pair``: the selected draw and its values, its validation and test
    figures (mean ± std over seeds) and the range of the draws' means."""
    rows = []
    for (cell_pair, condition, method), s in chosen.items():
        if cell_pair != pair:
            continue
        test_range = "-" if s.test_range is None else f"{s.test_range[0]:.2f} – {s.test_range[1]:.2f}"
        rows.append([condition, method, str(s.draws), f"{s.draw}: {_values(s.values)}", fmt(s.val),
                     fmt(s.test), f"{s.val_range[0]:.2f} – {s.val_range[1]:.2f}", test_range])
    header = ["condition", "method", "draws", "selected draw", "val top-1", "test top-1",
              "val over draws", "test over draws"]
    return markdown_table(header, rows) if rows else ""


def searched_keys(records: Sequence[dict[str, Any]], pair: str, condition: str) -> list[str]:
    runs = select(searched_records(records), pair=pair, condition=condition)
    return ordered(key for r in runs for key in (r.get("searched") or {}))
