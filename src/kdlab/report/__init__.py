"""``kdlab report DIR``: a study's or a ``kdlab dg`` output's ``results.jsonl`` as markdown tables and plots.

A dg results file gets DomainBed's table (:mod:`.domains`) and the cost table. For a study:

Tables show mean ± sample std over seeds and, for every method but the baseline, the difference of
the means against the baseline student (``baseline`` in the study file, ``ce`` by default) of the same
pair and condition; the best mean of a column is bold. Plots: top-1 against the noise rate and against
the imbalance ratio per method (with the teachers dashed), per-class top-1 bars, training curves
(validation top-1 and training loss per epoch) and the realized noise transition matrices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdlab.core.errors import ConfigError
from kdlab.protocols.grid import pair_slug, slug
from kdlab.report import plots
from kdlab.report.domains import domain_tables
from kdlab.report.results import load_results, ordered, results_path, select
from kdlab.report.search import Cell, Selection, keep_selected, search_table, searched_keys, select_draws
from kdlab.report.tables import (
    accuracy_table,
    conditions,
    cost_table,
    group_table,
    imbalance_table,
    noise_table,
)

__all__ = ["write_report"]


def _study_settings(root: Path) -> dict[str, Any]:
    path = root / "study.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def _image(lines: list[str], path: Path | None, out: Path, caption: str) -> None:
    if path is not None:
        lines += [f"![{caption}]({path.relative_to(out).as_posix()})", ""]


def write_report(location: str | Path, out: str | Path | None = None, split: str | None = None) -> Path:
    """Write ``report.md`` and its PNGs to ``out`` (default ``DIR/report``); returns the markdown path."""
    source = results_path(location)
    root = source.parent
    records = load_results(source)
    if not any(r.get("role") == "student" for r in records):
        raise ConfigError(f"{source}: no finished student runs to report")
    out = Path(out) if out is not None else root / "report"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    if all(r["protocol"] == "dg" for r in records):
        return _dg_report(records, source, out)
    settings = _study_settings(root)
    order = {m.get("label") or m["name"]: i for i, m in enumerate(settings.get("methods", []))}
    records.sort(key=lambda r: order.get(r.get("method"), len(order)))  # the study file's method order
    baseline = settings.get("baseline", "ce")
    split = split or settings.get("report", {}).get("split", "test_last")
    students = [r for r in records if r["role"] == "student"]
    seeds = ordered(r["seed"] for r in students)
    lines = [
        f"# Study report: {settings.get('name', root.name)}",
        "",
        f"From `{source}`: {len(students)} student runs and {len(records) - len(students)} teacher runs, "
        f"seeds {', '.join(map(str, seeds))}. Cells: {plots.SPLIT_LABEL[split]}, mean ± sample std over "
        f"seeds; in brackets the difference to the `{baseline}` student of the same pair and condition; "
        "bold: the best mean of the column. Test sets are clean and balanced.",
        "",
    ]
    chosen = select_draws(records, split)
    if chosen:
        lines += ["A searched method's cells show its validation-selected draw (Hyper-parameter search).", ""]
    shown = keep_selected(records, chosen)
    for pair in ordered(r["pair"] for r in students):
        lines += _pair_section(shown, pair, split, baseline, root, out)
    if chosen:
        lines += _search_section(records, chosen, split, settings, out)
    for title, table in (("Label noise actually applied", noise_table(records)),
                         ("Class imbalance actually applied", imbalance_table(records)),
                         ("Runs and cost", cost_table(records))):
        if table:
            lines += [f"## {title}", "", table, ""]
    for name in conditions(students):
        record = next(r for r in records if r["condition"] == name)
        if record["noise_rate"] > 0:
            _image(lines, plots.transition_matrix(root, record, out / f"transition_{slug(name)}.png"), out,
                   f"transition matrix, {name}")
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _search_section(records: list[dict[str, Any]], chosen: dict[Cell, Selection], split: str,
                    settings: dict[str, Any], out: Path) -> list[str]:
    log_keys = {key for m in settings.get("methods", []) for key, space in (m.get("search") or {}).items()
                if space.get("distribution") == "log_uniform"}
    lines = ["## Hyper-parameter search", "",
             f"Per cell, the draw with the best mean validation top-1 over seeds is selected (draw 0: the "
             f"defaults); test figures ({plots.SPLIT_LABEL[split]}) are shown for it, never used to select. "
             "Ranges: the lowest and highest mean over seeds among the cell's draws.", ""]
    for pair in ordered(cell[0] for cell in chosen):
        lines += [f"### {pair}", "", search_table(chosen, pair), ""]
        for condition in ordered(cell[1] for cell in chosen if cell[0] == pair):
            for key in searched_keys(records, pair, condition):
                name = f"search_{pair_slug(pair)}_{slug(condition)}_{slug(key)}.png"
                _image(lines, plots.search_plot(records, pair, condition, key, split, key in log_keys, chosen,
                                                out / name), out, f"validation top-1 vs {key}, {condition}")
    return lines


def _dg_report(records: list[dict[str, Any]], source: Path, out: Path) -> Path:
    lines = ["# Domain generalization report", "", f"From `{source}`.", "", domain_tables(records),
             "## Runs and cost", "", cost_table(records), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _pair_section(records: list[dict[str, Any]], pair: str, split: str, baseline: str | None, root: Path,
                  out: Path) -> list[str]:
    students = select(records, role="student", pair=pair)
    tag = pair_slug(pair)
    lines = [f"## {pair}", "", accuracy_table(records, pair, split, baseline), ""]
    for noise_type in ordered(r["noise_type"] for r in students if r["noise_type"]):
        _image(lines, plots.accuracy_vs_noise(records, pair, noise_type, split, baseline,
                                              out / f"noise_{tag}_{noise_type}.png"), out,
               f"accuracy vs {noise_type} noise")
    for profile in ordered(r["imbalance_profile"] for r in students if r["imbalance_profile"]):
        _image(lines, plots.accuracy_vs_imbalance(records, pair, profile, split, baseline,
                                                  out / f"imbalance_{tag}_{profile}.png"), out,
               f"accuracy vs {profile} imbalance")
    for condition in conditions(students):
        runs = select(students, condition=condition)
        if any(r["imbalance_ratio"] > 1 for r in runs):
            lines += [f"### {condition}: many / medium / few-shot top-1", "",
                      group_table(records, pair, condition, split, baseline), ""]
    for condition in conditions(students):
        _image(lines, plots.per_class(records, pair, condition, split, baseline,
                                      out / f"per_class_{tag}_{slug(condition)}.png"), out,
               f"per-class accuracy, {condition}")
    for condition in conditions(students):
        _image(lines, plots.training_curves(records, root, pair, condition, baseline,
                                            out / f"curves_{tag}_{slug(condition)}.png"), out,
               f"training curves, {condition}")
    return lines
