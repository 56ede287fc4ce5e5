"""PNG plots of a study (matplotlib, Agg backend): accuracy vs noise rate and vs imbalance ratio per
method, per-class accuracy bars, training curves, the realized noise transition matrices and, for a
hyper-parameter search, validation accuracy against each searched hyper-parameter."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.axes import Axes  # noqa: E402

from kdlab.engine.logger import read_metrics  # noqa: E402
from kdlab.report.results import Stat, metric, per_class_mean, select, split_metrics  # noqa: E402
from kdlab.report.search import validation_score  # noqa: E402
from kdlab.report.style import method_style, wants_log_scale  # noqa: E402
from kdlab.report.tables import methods, teacher_stat  # noqa: E402

DPI = 110
#: the widest figure a report draws, in inches (1540 px at DPI)
MAX_WIDTH = 14.0
#: per-class bars per panel; more classes x methods are split over several panels, one above the other
BARS_PER_PANEL = 120
SPLIT_LABEL = {"test_last": "test top-1 (%), last epoch", "test_selected": "test top-1 (%), val-selected"}


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _legend(ax: Axes) -> None:
    """The legend outside the axes, on the right, so it never hides data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _axis_plot(ax: Axes, records: Sequence[dict[str, Any]], x_key: str, points: Sequence[dict[str, Any]],
               split: str, baseline: str | None) -> None:
    """One line per method (mean with std error bars over seeds) plus the teachers, dashed."""
    xs = sorted({r[x_key] for r in points})
    for index, name in enumerate(methods(points, baseline)):
        runs = [r for r in points if r["method"] == name]
        stats = [Stat.of(metric(r, split) for r in runs if r[x_key] == x) for x in xs]
        shown = [(x, s) for x, s in zip(xs, stats, strict=True) if s is not None]
        ax.errorbar([x for x, _ in shown], [s.mean for _, s in shown], yerr=[s.std for _, s in shown],
                    **method_style(index), capsize=3, linewidth=2.2 if name == baseline else 1.4,
                    label=name + (" (baseline)" if name == baseline else ""))
    teachers = [(x, teacher_stat(records, [r for r in points if r[x_key] == x], split)) for x in xs]
    teachers = [(x, s) for x, s in teachers if s is not None]
    if teachers:
        ax.errorbar([x for x, _ in teachers], [s.mean for _, s in teachers],
                    yerr=[s.std for _, s in teachers], color="black", linestyle="--", marker="s", capsize=3,
                    label="teacher (CE)")
    ax.set_ylabel(SPLIT_LABEL[split])
    ax.grid(True, alpha=0.3)
    _legend(ax)


def accuracy_vs_noise(records: Sequence[dict[str, Any]], pair: str, noise_type: str, split: str,
                      baseline: str | None, path: Path) -> Path | None:
    """Top-1 against the noise rate (balanced data; rate 0 = clean) for one pair and noise type."""
    points = [r for r in select(records, role="student", pair=pair) if r["imbalance_ratio"] == 1
              and (r["noise_rate"] == 0 or r["noise_type"] == noise_type)]
    if len({r["noise_rate"] for r in points}) < 2:
        return None
    points = [{**r, "noise_pct": 100 * r["noise_rate"]} for r in points]
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    _axis_plot(ax, records, "noise_pct", points, split, baseline)
    ax.set_xlabel(f"{noise_type} label-noise rate (% of training labels)")
    ax.set_title(f"{pair}: accuracy under {noise_type} label noise\n"
                 "(clean test set; error bars: std over seeds)", fontsize=10)
    return _save(fig, path)


def accuracy_vs_imbalance(records: Sequence[dict[str, Any]], pair: str, profile: str, split: str,
                          baseline: str | None, path: Path) -> Path | None:
    """Top-1 against the imbalance ratio (clean labels; ratio 1 = balanced), log-scaled ratio axis."""
    points = [r for r in select(records, role="student", pair=pair) if r["noise_rate"] == 0
              and (r["imbalance_ratio"] == 1 or r["imbalance_profile"] == profile)]
    ratios = sorted({r["imbalance_ratio"] for r in points})
    if len(ratios) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    _axis_plot(ax, records, "imbalance_ratio", points, split, baseline)
    ax.set_xscale("log")
    ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
    ax.minorticks_off()
    ax.set_xlabel(f"imbalance ratio n_max/n_min ({profile} profile, log scale)")
    ax.set_title(f"{pair}: accuracy under {profile} class imbalance\n"
                 "(balanced test set; error bars: std over seeds)", fontsize=10)
    return _save(fig, path)


def per_class(records: Sequence[dict[str, Any]], pair: str, condition: str, split: str,
              baseline: str | None, path: Path) -> Path | None:
    """Per-class top-1 (mean over seeds) per method; classes labelled with their training counts."""
    runs = select(records, role="student", pair=pair, condition=condition)
    names = [m for m in methods(runs, baseline) if per_class_mean(select(runs, method=m), split)]
    if not names:
        return None
    first = next(r for r in runs if split_metrics(r, split).get("per_class_top1"))
    num_classes = len(split_metrics(first, split)["per_class_top1"])
    classes = first.get("classes") or [str(c) for c in range(num_classes)]
    counts = first.get("train_counts")
    labels = [f"{c}\n(n={counts[i]})" if counts else str(c) for i, c in enumerate(classes)]
    values = {name: per_class_mean(select(runs, method=name), split) for name in names}
    if num_classes > 20:
        fig, ax = plt.subplots(figsize=(min(MAX_WIDTH, max(8.0, 0.12 * num_classes)), 4.6))
        for index, name in enumerate(names):
            ax.plot(range(num_classes), values[name], label=name, linewidth=1.0, markersize=3,
                    **method_style(index))
        ax.set_xlabel("class id")
        axes = [ax]
    else:
        per_panel = max(1, BARS_PER_PANEL // len(names))
        chunks = [list(range(start, min(start + per_panel, num_classes)))
                  for start in range(0, num_classes, per_panel)]
        width_in = min(MAX_WIDTH, max(8.0, 0.12 * len(chunks[0]) * len(names)))
        fig, grid = plt.subplots(len(chunks), 1, figsize=(width_in, 4.6 * len(chunks)), squeeze=False)
        axes = [row[0] for row in grid]
        width = 0.8 / len(names)
        for ax, chunk in zip(axes, chunks, strict=True):
            for index, name in enumerate(names):
                ax.bar([c + (index - (len(names) - 1) / 2) * width for c in chunk],
                       [values[name][c] for c in chunk], width, label=name,
                       color=method_style(index)["color"])
            ax.set_xticks(chunk, [labels[c] for c in chunk], fontsize=7)
            ax.set_xlabel("class (training samples)" if counts else "class")
    for ax in axes:
        ax.set_ylabel(SPLIT_LABEL[split].replace("top-1", "per-class top-1"))
        ax.set_ylim(0, 100)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_title(f"{pair}, {condition}: per-class accuracy (mean over seeds, balanced test set)",
                      fontsize=10)
    _legend(axes[0])
    return _save(fig, path)


def _curves(run_dir: Path) -> tuple[list[float], list[float], list[float], list[float]]:
    """(eval epochs, val top-1, train-log epochs, train loss) from a run's metrics.jsonl."""
    ev_x, ev_y, tr_x, tr_y = [], [], [], []
    for row in read_metrics(run_dir):
        if row.get("kind") == "eval" and row.get("model") == "student" and "top1" in row:
            ev_x.append(row["epoch"])
            ev_y.append(row["top1"])
        elif row.get("kind") == "train" and isinstance(row.get("loss"), (int, float)):
            tr_x.append(row["epoch"])
            tr_y.append(row["loss"])
    return ev_x, ev_y, tr_x, tr_y


def training_curves(records: Sequence[dict[str, Any]], root: Path, pair: str, condition: str,
                    baseline: str | None, path: Path) -> Path | None:
    """Validation top-1 and training loss against epochs, one line per method (its first seed)."""
    runs = select(records, role="student", pair=pair, condition=condition)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.6, 6.2), sharex=True)
    drawn = False
    losses: list[float] = []
    for index, name in enumerate(methods(runs, baseline)):
        first = min(select(runs, method=name), key=lambda r: r["seed"])
        ev_x, ev_y, tr_x, tr_y = _curves(root / first["run_dir"])
        style = method_style(index)
        if ev_x:
            top.plot(ev_x, ev_y, markersize=3, label=f"{name} (seed {first['seed']})", **style)
            drawn = True
        if tr_x:
            bottom.plot(tr_x, tr_y, linewidth=1.0, label=name, color=style["color"],
                        linestyle=style["linestyle"])
            losses.extend(tr_y)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    top.set_ylabel("validation top-1 (%)\n(labels as corrupted)")
    top.set_title(f"{pair}, {condition}: training curves", fontsize=10)
    top.grid(True, alpha=0.3)
    _legend(top if top.lines else bottom)
    log_loss = wants_log_scale(losses)
    if log_loss:
        bottom.set_yscale("log")
    bottom.set_ylabel("training loss (weighted total)" + (", log scale" if log_loss else ""))
    bottom.set_xlabel("epoch")
    bottom.grid(True, alpha=0.3)
    return _save(fig, path)


def transition_matrix(root: Path, record: dict[str, Any], path: Path) -> Path | None:
    """The realized train transition matrix of a noisy condition (row-normalized, in %)."""
    summary_path = root / record["run_dir"] / "summary.json"
    if not summary_path.is_file():
        return None
    noise = json.loads(summary_path.read_text()).get("corruption", {}).get("noise")
    if not noise or not noise.get("transition_train"):
        return None
    counts = noise["transition_train"]
    rows = [[100.0 * v / max(sum(row), 1) for v in row] for row in counts]
    size = len(rows)
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    image = ax.imshow(rows, cmap="viridis", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the clean class's training samples")
    if size <= 12:
        ax.set_xticks(range(size))
        ax.set_yticks(range(size))
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                if value >= 0.05:
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if value < 50 else "black")
    ax.set_xlabel("label given (noisy)")
    ax.set_ylabel("true class")
    realized = noise.get("realized_rate_train")
    title = record["condition"]
    if isinstance(realized, (int, float)) and math.isfinite(realized):
        title += f": realized train noise {100 * realized:.1f}%"
    ax.set_title(title)
    return _save(fig, path)


def search_plot(records: Sequence[dict[str, Any]], pair: str, condition: str, key: str, split: str,
                log_x: bool, selected: dict[tuple[str, str, str], Any], path: Path) -> Path | None:
    """Validation top-1 (mean over seeds) of every draw against the searched hyper-parameter ``key``,
    one colour per method, the selected draw ringed."""
    runs = [r for r in select(records, role="student", pair=pair, condition=condition)
            if r.get("draw") is not None and isinstance((r.get("searched") or {}).get(key), (int, float))]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for index, name in enumerate(dict.fromkeys(r["method"] for r in runs)):
        mine = [r for r in runs if r["method"] == name]
        points = []
        for draw in sorted({r["draw"] for r in mine}):
            stat = Stat.of(validation_score(r, split) for r in mine if r["draw"] == draw)
            if stat is not None:
                points.append((draw, next(r for r in mine if r["draw"] == draw)["searched"][key], stat.mean))
        style = method_style(index)
        ax.scatter([x for _, x, _ in points], [y for _, _, y in points], color=style["color"],
                   marker=style["marker"], label=name)
        best = selected.get((pair, condition, name))
        ax.scatter([x for d, x, _ in points if best is not None and d == best.draw],
                   [y for d, _, y in points if best is not None and d == best.draw], s=160,
                   facecolors="none", edgecolors="black", linewidths=1.4)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(key + (" (log scale)" if log_x else ""))
    ax.set_ylabel("validation top-1 (%), mean over seeds")
    ax.set_title(f"{pair}, {condition}: validation accuracy of each draw\n(ringed: the selected draw)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(ax)
    return _save(fig, path)
