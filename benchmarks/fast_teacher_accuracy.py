"""Equal accuracy with the teacher's fast path on and off: KD on a CIFAR-10 slice, kdlab's defaults.

The phases of ``benchmarks/accuracy_check.py`` on the same slice (a stratified ``--train-size`` subset of
the shared CIFAR-10 JPEG tar, the full test set), each in its own subprocess:

  1. a teacher trained once with kdlab (cross-entropy, ``--teacher-epochs``, ``precision: auto``);
  2. the same KD run of the student twice, from identical initial weights, with ``teacher.fast`` on (the
     default) and off, in that order;
  3. both final students scored by one fp32 evaluator on the same test images.

Reported per run: test top-1 (the fp32 evaluator and kdlab's own final evaluation), the training loop's
wall and CPU time; and the largest difference between the two final students' weights.

Usage: python benchmarks/fast_teacher_accuracy.py [--teacher resnet56 --student resnet20 --train-size 4000
       --teacher-epochs 2 --epochs 2 --threads 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import accuracy_check
import benchlib


def max_weight_diff(a: Path, b: Path) -> float:
    """max |a - b| over every floating-point tensor of two saved state dicts."""
    import torch

    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa if sa[k].is_floating_point())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=accuracy_check.CIFAR_TAR)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", default="/tmp/kdlab-fast-teacher-accuracy")
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "fast_teacher_accuracy.json"))
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    machine = benchlib.machine_info()
    started = time.perf_counter()
    slice_args = argparse.Namespace(root=args.root, train_size=args.train_size, student=args.student,
                                    seed=args.seed, test_size=None)
    test = accuracy_check.prepare(slice_args, work)
    common = [benchlib.this_python(), str(benchlib.HERE / "accuracy_check.py"), "--root", str(args.root),
              "--work-dir", str(work), "--seed", str(args.seed), "--train-size", str(args.train_size),
              "--teacher", args.teacher, "--student", args.student, "--epochs", str(args.epochs),
              "--teacher-epochs", str(args.teacher_epochs), "--milestones", "", "--teacher-milestones", "",
              "--threads", str(args.threads)]
    phases: dict[str, dict[str, Any]] = {}
    for phase, extra in (("teacher", ["--phase", "teacher"]), ("fast", ["--phase", "kdlab"]),
                         ("eager", ["--phase", "kdlab", "--no-teacher-fast"])):
        result = benchlib.run_worker([*common, *extra], work / f"{phase}.log")
        result["loadavg_after"] = os.getloadavg()[0]
        result["train_cpu_s"] = round(result["train_wall_s"] * result["cpu_share"] * machine["cores"], 1)
        phases[phase] = result
        print(f"[{time.perf_counter() - started:5.0f}s] {phase}: {result}", flush=True)
    models = {"teacher": args.teacher, "fast": args.student, "eager": args.student}
    for phase, result in phases.items():
        top1 = accuracy_check.evaluate(models[phase], Path(result["state"]), test)
        result["test_top1_fp32"] = round(top1, 2)
    diff = max_weight_diff(Path(phases["fast"]["state"]), Path(phases["eager"]["state"]))
    labels = {"teacher": f"teacher {args.teacher}, CE",
              "fast": f"student {args.student}, KD, teacher.fast on (default)",
              "eager": f"student {args.student}, KD, teacher.fast: false"}
    rows = [[labels[p], args.teacher_epochs if p == "teacher" else args.epochs, r["precision"],
             f"{r['test_top1_fp32']:.2f}", f"{r['kdlab_test_top1']:.2f}", f"{r['train_wall_s']:.0f}",
             f"{r['train_cpu_s']:.0f}", f"{r['cpu_share']:.2f}"] for p, r in phases.items()]
    table = benchlib.markdown_table(
        ["run", "epochs", "precision", "test top-1 % (fp32 evaluator)", "test top-1 % (kdlab's eval)",
         "train wall s", "train CPU-s", "CPU share"], rows)
    machine["loadavg_at_end"] = os.getloadavg()
    print(f"\n{table}\n\nmax |weight difference| between the two students: {diff:.3e}")
    benchlib.write_result(args.out, "fast_teacher_accuracy", {
        "machine": machine,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_size": test["train_size"], "test_size": len(test["test_targets"]),
        "phases": phases, "student_max_weight_diff": diff, "table_markdown": table}, started)


if __name__ == "__main__":
    main()
