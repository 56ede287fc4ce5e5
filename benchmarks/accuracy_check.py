"""Equal accuracy on a short real run: kdlab's defaults vs torchdistill's defaults, same KD recipe.

On a CIFAR-10 slice read from the shared JPEG tar (a stratified ``--train-size`` subset of the 50k
training images; the full 10k test set unless ``--test-size`` is given):

  1. train a small teacher once with kdlab (cross-entropy, ``precision: auto``: bf16 autocast on a CPU
     with native bf16 kernels, else fp32);
  2. distill it into a student with kdlab's defaults (``precision: auto`` = bf16 autocast on this CPU,
     device-resident data with batched on-device crop/flip) and with torchdistill 1.1.5's defaults
     (fp32, a DataLoader over per-sample PIL RandomCrop/RandomHorizontalFlip/ToTensor/Normalize),
     for the same epochs, schedule, optimizer, batch size, KD loss (T=4, ce 0.1 + kd 0.9), seed and
     identical initial student and teacher weights;
  3. evaluate both final students with one fp32 evaluator on the same test images, and report each
     framework's wall time.

Every phase runs in its own subprocess (torchdistill's in ``.venv-torchdistill``). Work files (the
decoded slice handed to torchdistill, checkpoints, logs) go to ``--work-dir`` (``/tmp`` by default),
never into the repository.

Usage: python benchmarks/accuracy_check.py [--teacher resnet20 --student resnet8 --teacher-epochs 6
       --epochs 6 --threads 0] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import benchlib

CIFAR_TAR = benchlib.REPO.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar.gz"
CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]
BATCH, LR, MOMENTUM, WEIGHT_DECAY, TEMPERATURE, W_CE, W_KD = 64, 0.05, 0.9, 5e-4, 4.0, 0.1, 0.9


def kdlab_tree(args: argparse.Namespace, *, model: str, epochs: int, milestones: list[int],
               teacher_ckpt: str | None) -> dict[str, Any]:
    """A kdlab config on the CIFAR-10 slice; ``teacher_ckpt`` None means plain cross-entropy training."""
    tree: dict[str, Any] = {
        "data": {
            "name": "imagefolder",
            "root": str(args.root),
            "batch_size": BATCH,
            "val_fraction": 0.0,
            "subset": args.train_size,
            "split_seed": args.seed,
            "mean": CIFAR10_MEAN,
            "std": CIFAR10_STD,
        },
        "student": {"name": model},
        "optim": {"name": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        "schedule": {"name": "multistep", "milestones": milestones, "gamma": 0.1},
        "train": {"epochs": epochs, "device": "cpu", "seed": args.seed, "progress": False},
    }
    if teacher_ckpt is None:
        tree["method"] = {"name": "ce"}
    else:
        tree["teacher"] = {"name": args.teacher, "checkpoint": teacher_ckpt}
        if not args.teacher_fast:
            tree["teacher"]["fast"] = False
        tree["method"] = {"name": "kd", "weights": {"ce": W_CE, "kd": W_KD},
                          "params": {"temperature": TEMPERATURE}}
    return tree


def student_file(teacher_fast: bool) -> str:
    """The kdlab phase's saved student: ``student_kdlab.pt``, ``student_kdlab_eager.pt`` with ``teacher.fast``
    off."""
    return "student_kdlab.pt" if teacher_fast else "student_kdlab_eager.pt"


# ---------------------------------------------------------------- subprocess phases (system python)
def phase_kdlab(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from kdlab.config import validate
    from kdlab.engine import Callback
    from kdlab.models import build_model
    from kdlab.run import train

    class FitClock(Callback):
        """Wall and CPU time of the training loop alone (no data loading, model building, test eval)."""

        name = "fit_clock"

        def on_fit_start(self, trainer) -> None:
            self.start = benchlib.mark()

        def on_fit_end(self, trainer) -> None:
            self.end = benchlib.mark()

    work = Path(args.work_dir)
    if args.phase == "teacher":
        tree = kdlab_tree(args, model=args.teacher, epochs=args.teacher_epochs,
                          milestones=args.teacher_milestones, teacher_ckpt=None)
        student = None
    else:
        tree = kdlab_tree(args, model=args.student, epochs=args.epochs, milestones=args.milestones,
                          teacher_ckpt=str(work / "teacher.pt"))
        student = build_model(args.student, 10)
        student.load_state_dict(torch.load(work / "student_init.pt", weights_only=True))
    config = validate(tree, "accuracy_check")
    clock = FitClock()
    started = time.perf_counter()
    result = train(config, student=student, callbacks=[clock], write=False)
    wall = time.perf_counter() - started
    fit_wall, fit_cpu = (e - s for e, s in zip(clock.end, clock.start, strict=True))
    name = "teacher.pt" if args.phase == "teacher" else student_file(args.teacher_fast)
    torch.save(result.student.state_dict(), work / name)
    summary = result.summary
    return {
        "train_wall_s": round(fit_wall, 1),
        "img_per_s": round(summary["steps"] * BATCH / fit_wall, 1),
        "cpu_share": round(fit_cpu / (fit_wall * (os.cpu_count() or 1)), 3),
        "run_wall_s": round(wall, 1),
        "kdlab_train_time_s": summary["train_time_s"],
        "kdlab_img_per_s": summary["img_per_s"],
        "steps": summary["steps"],
        "precision": summary["precision"],
        "kdlab_test_top1": summary["test_last"]["top1"],
        "peak_rss_mib": round(benchlib.peak_rss_mib(), 1),
        "state": str(work / name),
    }


# ---------------------------------------------------------------- the parent
def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Decode the tar (kdlab's cache), pick kdlab's training subset, write it for torchdistill."""
    import torch

    from kdlab.data.imagefolder import load_imagefolder
    from kdlab.data.splits import split_train_val, take_subset
    from kdlab.models import build_model

    raw = load_imagefolder(args.root)
    train_pos, _ = split_train_val(raw.train.targets, 0.0, args.seed)
    train_pos = train_pos[take_subset(raw.train.targets[train_pos], args.train_size, args.seed)]
    torch.save({"train_images": raw.train.images[train_pos].clone(),
                "train_targets": raw.train.targets[train_pos].clone(),
                "num_classes": len(raw.classes)}, work / "train_slice.pt")
    torch.manual_seed(args.seed)
    torch.save(build_model(args.student, len(raw.classes)).state_dict(), work / "student_init.pt")
    test_images, test_targets = raw.test.images, raw.test.targets
    if args.test_size is not None:
        picked = take_subset(test_targets, args.test_size, args.seed)
        test_images, test_targets = test_images[picked], test_targets[picked]
    return {"test_images": test_images, "test_targets": test_targets, "train_size": len(train_pos),
            "num_classes": len(raw.classes)}


def evaluate(model_name: str, state_path: Path, test: dict[str, Any]) -> float:
    """Top-1 (%) of a saved state in fp32 on the test images, normalized like both pipelines."""
    import torch

    from kdlab.models import build_model

    model = build_model(model_name, test["num_classes"])
    model.load_state_dict(torch.load(state_path, weights_only=True))
    model.eval()
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(test["test_targets"]), 500):
            x = (test["test_images"][start:start + 500].float() / 255 - mean) / std
            y = test["test_targets"][start:start + 500]
            correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(test["test_targets"])


def render(phases: dict[str, dict[str, Any]], settings: dict[str, Any], cores: int
           ) -> tuple[str, float, float, float]:
    """The results table; kdlab - torchdistill top-1 and torchdistill/kdlab wall and CPU-time ratios.

    "train CPU-s" is the training process's CPU time over its training loop (wall x CPU share x
    cores): what the loop costs in CPU, whatever else ran on the machine. torchdistill's DataLoader
    workers are separate processes and are not counted in it.
    """
    for result in phases.values():
        result["train_cpu_s"] = round(result["train_wall_s"] * result["cpu_share"] * cores, 1)
    teacher_precision, kdlab_precision = (phases[p].get("precision", "bf16") for p in ("teacher", "kdlab"))
    labels = {
        "teacher": f"teacher {settings['teacher']} (kdlab, CE, {teacher_precision})",
        "kdlab": f"student {settings['student']}, KD, kdlab defaults ({kdlab_precision}, device-resident)",
        "torchdistill": f"student {settings['student']}, KD, torchdistill 1.1.5 defaults (fp32, "
                        f"DataLoader num_workers={settings['td_workers']})",
    }
    rows = []
    for phase, label in labels.items():
        r = phases[phase]
        epochs = settings["teacher_epochs"] if phase == "teacher" else settings["epochs"]
        rows.append([label, epochs, f"{r['test_top1_fp32']:.2f}", f"{r['train_wall_s']:.0f}",
                     f"{r['img_per_s']:.0f}", f"{r['cpu_share']:.2f}", f"{r['train_cpu_s']:.0f}",
                     f"{r['peak_rss_mib']:.0f}"])
    table = benchlib.markdown_table(
        ["run", "epochs", "test top-1 % (fp32 eval)", "train wall s", "train img/s", "CPU share",
         "train CPU-s", "peak RSS MiB"], rows)
    gap = phases["kdlab"]["test_top1_fp32"] - phases["torchdistill"]["test_top1_fp32"]
    wall = phases["torchdistill"]["train_wall_s"] / phases["kdlab"]["train_wall_s"]
    cpu = phases["torchdistill"]["train_cpu_s"] / phases["kdlab"]["train_cpu_s"]
    return table, gap, wall, cpu


def report_only(path: Path) -> None:
    """Re-render the table of a finished run's JSON, and rewrite it."""
    payload = json.loads(path.read_text())
    table, gap, wall, cpu = render(payload["phases"], payload["settings"], payload["machine"]["cores"])
    payload.update(table_markdown=table, kdlab_minus_torchdistill_top1=round(gap, 2),
                   wall_speedup=round(wall, 2), cpu_time_speedup=round(cpu, 2))
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(table + f"\n\nkdlab - torchdistill top-1: {gap:+.2f} points; torchdistill/kdlab training "
          f"wall time {wall:.2f}x, CPU time {cpu:.2f}x")


def main_parent(args: argparse.Namespace) -> None:
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    td_python = benchlib.python_for_torchdistill(args.td_python)
    if td_python is None:
        sys.exit(f"no torchdistill venv at {benchlib.TD_VENV}: see BENCHMARKS.md for its setup")
    machine = benchlib.machine_info()
    started = time.perf_counter()
    test = prepare(args, work)
    print(f"[{time.perf_counter() - started:5.0f}s] slice: {test['train_size']} train, "
          f"{len(test['test_targets'])} test images", flush=True)

    common = ["--root", str(args.root), "--work-dir", str(work), "--seed", str(args.seed),
              "--train-size", str(args.train_size), "--teacher", args.teacher, "--student", args.student,
              "--epochs", str(args.epochs), "--teacher-epochs", str(args.teacher_epochs),
              "--milestones", ",".join(map(str, args.milestones)),
              "--teacher-milestones", ",".join(map(str, args.teacher_milestones)),
              "--threads", str(args.threads)]
    me = [benchlib.this_python(), str(Path(__file__).resolve())]
    phases = {}
    for phase in ("teacher", "kdlab", "torchdistill"):
        if phase == "torchdistill":
            argv = [str(td_python), str(benchlib.HERE / "td_worker.py"), "accuracy",
                    "--data", str(work / "train_slice.pt"), "--epochs", str(args.epochs),
                    "--milestones", ",".join(map(str, args.milestones)), "--workers", str(args.td_workers),
                    "--teacher", args.teacher, "--student", args.student, "--seed", str(args.seed),
                    "--teacher-ckpt", str(work / "teacher.pt"),
                    "--student-init", str(work / "student_init.pt"),
                    "--save-student", str(work / "student_torchdistill.pt"), "--threads", str(args.threads)]
        else:
            argv = [*me, "--phase", phase, *common]
        idle = benchlib.wait_for_idle(args.idle_wait, args.idle_threshold)
        phase_started = time.perf_counter()
        result = benchlib.run_worker(argv, work / f"{phase}.log")
        result.update(idle, loadavg_after=os.getloadavg()[0])
        phases[phase] = result
        took = time.perf_counter() - phase_started
        print(f"[{time.perf_counter() - started:5.0f}s] {phase}: {took:.0f} s, {json.dumps(result)}",
              flush=True)

    model_of = {"teacher": args.teacher, "kdlab": args.student, "torchdistill": args.student}
    state_of = {"teacher": work / "teacher.pt", "kdlab": work / "student_kdlab.pt",
                "torchdistill": work / "student_torchdistill.pt"}
    for phase in phases:
        phases[phase]["test_top1_fp32"] = round(evaluate(model_of[phase], state_of[phase], test), 2)
    machine["loadavg_at_end"] = os.getloadavg()

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "phase"}
    table, gap, speedup, cpu_speedup = render(phases, settings, machine["cores"])
    total = time.perf_counter() - started
    text = (f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}; load average "
            f"{machine['loadavg_at_start'][0]:.2f} at start, {machine['loadavg_at_end'][0]:.2f} at end\n"
            f"CIFAR-10 JPEG slice: {test['train_size']} train (stratified, seed {args.seed}), "
            f"{len(test['test_targets'])} test; batch {BATCH}, SGD lr {LR} momentum {MOMENTUM} "
            f"wd {WEIGHT_DECAY}, multistep {args.milestones}; KD T={TEMPERATURE} ce {W_CE} kd {W_KD}; "
            f"total {total:.0f} s\n\n{table}\n\n"
            f"kdlab - torchdistill top-1: {gap:+.2f} points; torchdistill/kdlab training time: wall "
            f"{speedup:.2f}x, CPU {cpu_speedup:.2f}x (training loops only: no data decoding, model "
            "building or test evaluation)")
    print("\n" + text)
    benchlib.write_result(args.out, "kd_accuracy_check", {
        "machine": machine,
        "settings": settings,
        "phases": phases,
        "kdlab_minus_torchdistill_top1": round(gap, 2),
        "wall_speedup": round(speedup, 2),
        "cpu_time_speedup": round(cpu_speedup, 2),
        "table_markdown": table,
    }, started)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=CIFAR_TAR, help="the CIFAR-10 JPEG tar")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--test-size", type=int, default=None, help="stratified test slice (default: all)")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--teacher-milestones", type=int_list, default=[4])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--milestones", type=int_list, default=[4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads in every phase (0: torch's default, one per core)")
    parser.add_argument("--td-python", default=None, help=f"default: {benchlib.TD_PYTHON}")
    parser.add_argument("--td-workers", type=int, default=2, help="torchdistill DataLoader num_workers")
    parser.add_argument("--idle-wait", type=float, default=120,
                        help="before each phase, wait up to this many s for other processes to go quiet")
    parser.add_argument("--idle-threshold", type=float, default=0.15,
                        help="'quiet': other processes use less than this share of the machine's CPU")
    parser.add_argument("--work-dir", default="/tmp/kdlab-accuracy-check")
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "accuracy.json"))
    parser.add_argument("--report-only", metavar="JSON", help="re-render the table of a finished run")
    parser.add_argument("--phase", choices=["teacher", "kdlab"], help=argparse.SUPPRESS)
    parser.add_argument("--no-teacher-fast", dest="teacher_fast", action="store_false",
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report_only:
        report_only(Path(args.report_only))
        return
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.phase is not None:
        benchlib.emit(phase_kdlab(args))
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
