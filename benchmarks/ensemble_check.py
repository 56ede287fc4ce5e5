"""CPU-sized check of ensemble distillation on MNIST: KD from the ensemble vs BatchEnsemble + averaging
vs + diversifying perturbation (Nam et al., ICML 2022), several seeds, one table.

1. Train ``--teachers`` small CNN teachers (cross-entropy, seeds 100, 101, ...). By default teachers and
   student share one architecture (``cnn_tiny``), as in the paper's WRN-28-4 -> WRN-28-4 setting.
2. Evaluate their ensemble (mean probability) on the test split.
3. For every seed, distill the ensemble into a small student three ways: ``ensemble_kd`` (KD from the
   ensemble), ``batchensemble_kd`` (BatchEnsemble student, factors averaged into one network) and
   ``batchensemble_kd`` with the TDiv-SDiv perturbation. Every student run selects its checkpoint on
   the validation split; the table reports that model's test metrics (for BatchEnsemble runs: the
   merged single network).
4. Write ``results.jsonl`` (one line per run) and ``results.md`` (mean ± std over seeds) to ``--out-dir``.

Every run is an ordinary kdlab run directory under ``--out-dir``. The recipe is the repository's MNIST
one (batch 128, SGD 0.05 momentum 0.9, wd 5e-4, cosine) with the paper's KD settings (T = 4, kd weight
1, no label term), on a stratified ``--subset`` of the training split.

Usage: python benchmarks/ensemble_check.py [--root ../shared/data --teacher cnn_tiny --student cnn_tiny
       --teachers 4 --seeds 0 1 2 --teacher-epochs 6 --epochs 5 --subset 10000 --precision bf16
       --threads 1] [--out-dir /tmp/ensemble_check]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import benchlib
import torch

from kdlab.assembly import build_run_data, build_teacher_ensemble
from kdlab.config import validate
from kdlab.core.runtime import Runtime
from kdlab.engine.metrics import evaluate_model
from kdlab.engine.precision import resolve_precision
from kdlab.ensemble import TeacherEnsemble
from kdlab.run import train

# (table label, run-name prefix, method section without weights and temperature)
METHODS = [
    ("KD from the ensemble", "kd", {"name": "ensemble_kd"}),
    ("+ BatchEnsemble + averaging", "latentbe", {"name": "batchensemble_kd"}),
    ("+ TDiv-SDiv perturbation", "latentbe-tdivsdiv",
     {"name": "batchensemble_kd", "params": {"perturb": {"objective": "tdiv_sdiv"}}}),
]
METRICS = ("top1", "nll", "ece", "agreement", "kl")


def base_tree(args: argparse.Namespace, name: str, student: str, epochs: int, seed: int) -> dict[str, Any]:
    return {
        "data": {"name": "mnist", "root": args.root, "batch_size": 128, "val_fraction": 0.1,
                 "subset": args.subset},
        "student": {"name": student},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": epochs, "precision": args.precision, "seed": seed, "progress": False,
                  "log_every": 100},
        "out_dir": str(args.out_dir),
        "name": name,
    }


def run_or_reuse(tree: dict[str, Any]) -> dict[str, Any]:
    """Train the run, reuse it if finished, or resume it from ``last.pt`` (so the script can be restarted)."""
    run_dir = Path(tree["out_dir"]) / tree["name"]
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    resume = run_dir if (run_dir / "last.pt").is_file() else None
    return train(validate(tree, tree["name"]), resume=resume).summary


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(benchlib.REPO.parent / "shared" / "data"))
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/ensemble_check"))
    parser.add_argument("--teacher", default="cnn_tiny")
    parser.add_argument("--student", default="cnn_tiny")
    parser.add_argument("--teachers", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    teacher_dirs, teacher_rows = [], []
    for i in range(args.teachers):
        name = f"teacher-{args.teacher}-{i}"
        tree = base_tree(args, name, args.teacher, args.teacher_epochs, 100 + i)
        tree["method"] = {"name": "ce"}
        summary = run_or_reuse(tree)
        teacher_dirs.append(str(args.out_dir / name))
        teacher_rows.append(summary["test_selected"])
        print(f"{name}: test {json.dumps(summary['test_selected'])}", flush=True)

    teachers = [{"name": args.teacher, "checkpoint": d} for d in teacher_dirs]
    probe = validate({**base_tree(args, "probe", args.student, 1, 0), "teachers": teachers})
    device = torch.device("cpu")
    data = build_run_data(probe, Runtime(device, seed=probe.train.seed))
    ensemble: TeacherEnsemble = build_teacher_ensemble(probe.teachers, data)
    ensemble_test = evaluate_model(ensemble, data.test, resolve_precision(args.precision, device))
    print(f"teacher ensemble: test {json.dumps(ensemble_test)}", flush=True)

    records = []
    with (args.out_dir / "results.jsonl").open("w") as log:
        for seed in args.seeds:
            for label, prefix, method in METHODS:
                name = f"{prefix}-s{seed}"
                tree = base_tree(args, name, args.student, args.epochs, seed)
                tree["teachers"] = teachers
                tree["method"] = {**method, "weights": {"ce": 0.0, "kd": 1.0}}
                tree["method"]["params"] = {"temperature": 4.0, **method.get("params", {})}
                summary = run_or_reuse(tree)
                record = {"method": label, "seed": seed, "run": name, "model": summary["model"],
                          "train_time_s": summary["train_time_s"], **summary["test_selected"]}
                records.append(record)
                log.write(json.dumps(record) + "\n")
                log.flush()
                print(json.dumps(record), flush=True)

    header = ["method", "top-1 %", "NLL", "ECE %", "agreement %", "KL", "train s / run"]
    rows = [["teacher ensemble (mean prob.)", f"{ensemble_test['top1']:.3f}", f"{ensemble_test['nll']:.3f}",
             f"{ensemble_test['ece']:.3f}", "100", "0", "-"]]
    rows += [[f"teacher {i} (single)", *(f"{r[m]:.3f}" for m in ("top1", "nll", "ece")), "-", "-", "-"]
             for i, r in enumerate(teacher_rows)]
    for label, _, _ in METHODS:
        mine = [r for r in records if r["method"] == label]
        rows.append([label, *(mean_std([r[m] for r in mine]) for m in METRICS),
                     f"{statistics.mean(r['train_time_s'] for r in mine):.0f}"])
    table = benchlib.markdown_table(header, rows)
    text = (f"MNIST, {args.teachers} x {args.teacher} teachers ({args.teacher_epochs} epochs), student "
            f"{args.student} ({args.epochs} epochs), train subset {args.subset}, {args.precision}, seeds "
            f"{args.seeds}; mean ± std over seeds; test split, validation-selected model.\n\n{table}\n\n"
            f"wall time {time.perf_counter() - started:.0f} s; "
            f"machine: {json.dumps(benchlib.machine_info())}\n")
    (args.out_dir / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
