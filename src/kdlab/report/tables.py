"""Markdown tables of a study: mean +- std over seeds, and the delta against the baseline student."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kdlab.report.results import Stat, metric, ordered, select

GROUPS = ("many", "medium", "few")


def condition_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """Clean first, then noise by type and rate, then imbalance by profile and ratio, then crossed."""
    noisy, imbalanced = record["noise_rate"] > 0, record["imbalance_ratio"] > 1
    family = 0 if not (noisy or imbalanced) else 1 if not imbalanced else 2 if not noisy else 3
    return (family, record.get("noise_type") or "", record["noise_rate"],
            record.get("imbalance_profile") or "", record["imbalance_ratio"])


def conditions(records: Sequence[dict[str, Any]]) -> list[str]:
    """Condition names in reading order (see :func:`condition_key`)."""
    first = {}
    for record in records:
        first.setdefault(record["condition"], record)
    return sorted(first, key=lambda name: condition_key(first[name]))


def methods(records: Sequence[dict[str, Any]], baseline: str | None) -> list[str]:
    names = ordered(r["method"] for r in records if r["role"] == "student")
    return sorted(names, key=lambda m: m != baseline)


def fmt(stat: Stat | None, digits: int = 2) -> str:
    if stat is None:
        return "-"
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}" if stat.n > 1 else f"{stat.mean:.{digits}f}"


def delta(stat: Stat | None, base: Stat | None) -> str:
    if stat is None or base is None:
        return ""
    return f" ({stat.mean - base.mean:+.2f})"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [_row(header), _row(["---"] * len(header))]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def teacher_stat(records: Sequence[dict[str, Any]], students: Sequence[dict[str, Any]], split: str,
                 key: str = "top1") -> Stat | None:
    """The test score of the teachers that ``students`` were distilled from (each teacher once)."""
    teacher_ids = ordered(r["teacher_run"] for r in students if r.get("teacher_run"))
    by_id = {r["id"]: r for r in records if r["role"] == "teacher"}
    return Stat.of(metric(by_id[t], split, key) for t in teacher_ids if t in by_id)


def accuracy_table(records: Sequence[dict[str, Any]], pair: str, split: str, baseline: str | None,
                   key: str = "top1") -> str:
    """Rows: the teacher and each method; columns: conditions; cells: mean ± std (delta vs baseline)."""
    students = select(records, role="student", pair=pair)
    columns = conditions(students)
    rows = []
    teacher_cells = [fmt(teacher_stat(records, select(students, condition=c), split, key)) for c in columns]
    if any(cell != "-" for cell in teacher_cells):
        rows.append(["teacher (CE)", *teacher_cells])
    stats = {(m, c): Stat.of(metric(r, split, key) for r in select(students, method=m, condition=c))
             for m in methods(students, baseline) for c in columns}
    best = {c: max((s.mean for (m, cc), s in stats.items() if cc == c and s is not None), default=None)
            for c in columns}
    for name in methods(students, baseline):
        cells = []
        for column in columns:
            stat, base = stats[name, column], stats.get((baseline, column))
            text = fmt(stat) + ("" if name == baseline else delta(stat, base))
            cells.append(f"**{text}**" if stat is not None and stat.mean == best[column] else text)
        rows.append([name, *cells])
    return markdown_table(["method", *columns], rows)


def group_table(records: Sequence[dict[str, Any]], pair: str, condition: str, split: str,
                baseline: str | None) -> str:
    """One condition: overall and many/medium/few top-1 per method, with deltas vs the baseline."""
    students = select(records, role="student", pair=pair, condition=condition)
    rows = []
    header = ["method", "top-1", *(f"{g}-shot" for g in GROUPS)]
    base = {key: Stat.of(metric(r, split, key) for r in select(students, method=baseline))
            for key in ("top1", *(f"top1_{g}" for g in GROUPS))}
    for name in methods(students, baseline):
        runs = select(students, method=name)
        cells = []
        for key in ("top1", *(f"top1_{g}" for g in GROUPS)):
            stat = Stat.of(metric(r, split, key) for r in runs)
            cells.append(fmt(stat) + ("" if name == baseline else delta(stat, base[key])))
        rows.append([name, *cells])
    return markdown_table(header, rows)


def noise_table(records: Sequence[dict[str, Any]]) -> str:
    """Per noisy condition: type, nominal rate and the realized rates of the shared label file."""
    rows = []
    for name in conditions(records):
        record = next(r for r in records if r["condition"] == name)
        if record["noise_rate"] == 0:
            continue
        realized = [record.get("realized_noise_train"), record.get("realized_noise_val")]
        rows.append([name, str(record["noise_type"]), f"{record['noise_rate']:g}",
                     *("-" if v is None else f"{v:.4f}" for v in realized)])
    header = ["condition", "type", "rate", "realized (train)", "realized (val)"]
    return markdown_table(header, rows) if rows else ""


def imbalance_table(records: Sequence[dict[str, Any]]) -> str:
    """Per imbalanced condition: the training class counts and the many/medium/few classes."""
    rows = []
    imbalanced = [r for r in records if r["imbalance_ratio"] > 1 and r.get("train_counts")]
    for name in conditions(imbalanced):
        record = next(r for r in imbalanced if r["condition"] == name)
        counts, groups = record["train_counts"], record.get("groups") or {}
        shown = ", ".join(map(str, counts)) if len(counts) <= 20 else f"{max(counts)} ... {min(counts)}"
        group_text = "; ".join(f"{g}: {len(groups.get(g, []))}" for g in GROUPS)
        rows.append([name, shown, f"{max(counts) / max(min(counts), 1):.1f}", f"{groups.get('rule', '-')}: "
                     f"{group_text}"])
    header = ["condition", "training samples per class", "n_max/n_min", "groups (classes)"]
    return markdown_table(header, rows) if rows else ""


def cost_table(records: Sequence[dict[str, Any]]) -> str:
    """Runs and mean cost per run per role and method: train time, step time, images per second and
    peak memory."""
    rows = []
    keys = ("train_time_s", "step_time_ms", "img_per_s", "peak_mem_mb")
    for role in ("teacher", "student"):
        for name in ordered(r["method"] for r in records if r["role"] == role):
            runs = select(records, role=role, method=name)
            stats = [Stat.of((r.get("cost") or {}).get(key) for r in runs) for key in keys]
            rows.append([role, name, str(len(runs)), *(fmt(stat, 1) for stat in stats)])
    header = ["role", "method", "runs", "train time (s)", "step time (ms)", "img/s", "peak memory (MiB)"]
    return markdown_table(header, rows)
