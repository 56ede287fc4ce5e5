"""``kdlab demo``: real distillation on scikit-learn's bundled digits, no download, a minute or two on CPU.

Trains a teacher CNN with cross-entropy, a smaller student from scratch, and the same student with
Hinton KD from that teacher; then prints top-1, NLL, ECE (on the held-out test split), parameter
count and time for each, and the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kdlab.config.load import validate
from kdlab.run import RunResult, train

TEACHER = "cnn_small"
STUDENT = "cnn_tiny"


@dataclass(frozen=True)
class DemoRow:
    name: str
    result: RunResult


def demo_config(model: str, method: str, out_dir: Path, name: str, seed: int, epochs: int,
                teacher_dir: Path | None = None) -> dict:
    config = {
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.15, "split_seed": 0},
        "student": {"name": model},
        "method": {"name": method},
        "optim": {"name": "adamw", "lr": 5e-3, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "warmup": 1},
        "train": {"epochs": epochs, "seed": seed, "precision": "fp32", "progress": False, "log_every": 20},
        "out_dir": str(out_dir),
        "name": name,
    }
    if teacher_dir is not None:
        config["teacher"] = {"name": TEACHER, "checkpoint": str(teacher_dir)}
        config["method"]["weights"] = {"ce": 0.5, "kd": 0.5}
        config["method"]["params"] = {"temperature": 4.0}
    return config


def run_demo(out_dir: str | Path = "runs", seed: int = 0, epochs: int = 20) -> tuple[Path, list[DemoRow]]:
    """Train teacher, student from scratch and KD student; returns the demo directory and the rows."""
    root = Path(out_dir) / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}-seed{seed}"
    teacher = train(validate(demo_config(TEACHER, "ce", root, "teacher", seed, epochs)))
    scratch = train(validate(demo_config(STUDENT, "ce", root, "student-ce", seed, epochs)))
    distilled = train(validate(demo_config(STUDENT, "kd", root, "student-kd", seed, epochs, teacher.run_dir)))
    rows = [DemoRow(f"teacher ({TEACHER}, CE)", teacher), DemoRow(f"student ({STUDENT}, CE)", scratch),
            DemoRow(f"student ({STUDENT}, KD)", distilled)]
    return root, rows


def format_table(rows: list[DemoRow]) -> str:
    """A markdown table of test metrics of the validation-selected checkpoint of each run."""
    lines = ["| model | test top-1 % | test NLL | test ECE % | params | train time s |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        s = row.result.summary
        t = s["test_selected"]
        lines.append(f"| {row.name} | {t['top1']:.2f} | {t['nll']:.4f} | {t['ece']:.2f} | "
                     f"{s['student_params']:,} | {s['train_time_s']:.1f} |")
    return "\n".join(lines)
