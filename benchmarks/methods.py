"""Training cost of each distillation method relative to Hinton KD, on one teacher/student pair.

resnet56 (teacher) -> resnet20 with 100 classes, batch 64, synthetic 32x32 images, each method with the
loss weights and parameters of its shipped CIFAR-100 config (``configs/cifar100/<method>_resnet56_resnet20
.yaml``; ``kd`` and ``ce`` with their defaults, which are the same recipe), SGD as in the CIFAR-100
recipe, kdlab's default precision and memory format, through ``kdlab.run.train`` (the Trainer's whole
step: data, forward, loss, backward, optimizer, bookkeeping).

Methods whose shipped config is multi-stage are measured in the stage that distills, run alone:
``ab`` and ``fsp`` in their ``init`` stage (the distillation loss; their ``main`` stage is plain CE),
``ft`` in its ``main`` stage (CE + factor transfer; its ``paraphraser`` stage trains only the
paraphraser), ``stagewise`` in ``stage3`` of its default plan (the last and costliest mimic stage: both
networks run to the end of stage 3, only the student's ``layer3`` trains). ``bss`` gets
``params.epochs: 240`` (the recipe's length), so that its schedule is in its first epoch and the
adversarial attack runs, as it does for the first 75 % of a real run. ``dml`` trains its resnet56 peer
from scratch beside the student (no teacher). Not measured: ``ensemble_kd`` and ``batchensemble_kd``
(several teachers; see ``ensemble_teachers.py``) and ``ipwd_self`` (self-distillation, no pair).

The teacher is trained first (cross-entropy on the same synthetic distribution), because ``bss``
attacks only the samples the teacher classifies correctly; every method then loads it from its
checkpoint. Each measurement runs in its own subprocess: a clean peak memory and no state shared between
methods. Methods are interleaved (one run of every method per repeat, odd repeats in reverse order) and
the median over repeats is reported. Throughput is taken over the steady state, from the end of the last
warm-up step to the end of the last step. Peak memory is, on CPU, the peak resident set size
(``ru_maxrss``) at the end of the last training step minus the resident set size after importing torch
and kdlab (so the final evaluation is excluded); on CUDA, ``torch.cuda.max_memory_allocated`` at the end
of the last step.

Usage: python benchmarks/methods.py [--threads 1 --steps 10 --warmup 3 --repeats 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import benchlib
import timed_train

TEACHER, STUDENT, NUM_CLASSES, BATCH = "resnet56", "resnet20", 100, 64
PAIR_CONFIG = "configs/cifar100/{}_resnet56_resnet20.yaml"
METHODS = ("ce", "kd", "fitnet", "at", "fsp", "nst", "sp", "rkd", "pkt", "vid", "cc", "ab", "ft", "crd",
           "dkd", "bss", "dml", "ipwd", "stagewise")
#: the stage of a multi-stage shipped config that is measured (see the module docstring)
MEASURED_STAGE = {"ab": "init", "fsp": "init", "ft": "main"}
#: stagewise's ``stage3`` as its default plan builds it for resnet20 (segments conv1..layer1, layer2, layer3)
STAGEWISE_STAGE3 = {"name": "stage3", "weights": {"mimic": 1.0, "ce": 0.0},
                    "train_only": ["student.layer3", "adapters.2"]}
BSS_EPOCHS = 240


# ---------------------------------------------------------------- what each method runs
def recipe() -> dict[str, Any]:
    """The CIFAR-100 recipe's optimizer section."""
    from kdlab.config.load import read_yaml

    return read_yaml(benchlib.REPO / "configs" / "cifar100" / "_recipe.yaml")["optim"]


def method_setup(name: str) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """The method section, the stage measured alone (or None) and a description of what is measured."""
    from kdlab.config.load import read_yaml

    path = benchlib.REPO / PAIR_CONFIG.format(name)
    if not path.is_file():
        return {"name": name}, None, "defaults"
    tree = read_yaml(path)
    method = tree["method"]
    where = f"`{PAIR_CONFIG.format(name)}`"
    if name == "stagewise":
        return method, STAGEWISE_STAGE3, f"{where}, stage `stage3` of its default plan"
    if name == "bss":
        method.setdefault("params", {})["epochs"] = BSS_EPOCHS
        return method, None, f"{where}, `params.epochs: {BSS_EPOCHS}` (attack on)"
    if name in MEASURED_STAGE:
        stage = next(s for s in tree["stages"] if s["name"] == MEASURED_STAGE[name])
        return method, stage, f"{where}, stage `{stage['name']}`"
    return method, None, where


def student_tree(args: argparse.Namespace, name: str, teacher_dir: str) -> dict[str, Any]:
    from kdlab.methods import METHODS as REGISTRY

    method, stage, _ = method_setup(name)
    needs_teacher = REGISTRY.get(name).needs_teacher
    tree = timed_train.synthetic_tree(
        student=STUDENT, teacher=TEACHER if needs_teacher else None, method=method, num_classes=NUM_CLASSES,
        batch_size=BATCH, total_steps=args.warmup + args.steps, optim=recipe(), device=args.device,
        seed=args.seed, stage=stage)
    if needs_teacher:
        tree["teacher"]["checkpoint"] = teacher_dir
    return tree


# ---------------------------------------------------------------- workers (one measurement per process)
def worker_teacher(args: argparse.Namespace) -> dict[str, Any]:
    """Train the teacher with cross-entropy into ``--work-dir``; report its run directory and accuracy."""
    from kdlab.config import validate
    from kdlab.run import train

    tree = timed_train.synthetic_tree(
        student=TEACHER, teacher=None, method={"name": "ce"}, num_classes=NUM_CLASSES, batch_size=BATCH,
        total_steps=args.teacher_steps, optim=recipe(), device=args.device, seed=args.seed)
    tree["data"]["options"]["num_test"] = 1000
    tree.update(name="teacher", out_dir=str(Path(args.work_dir)))
    result = train(validate(tree, "benchmark teacher"))
    return {"run_dir": str(result.run_dir), "test_top1": result.summary["test_last"]["top1"]}


def worker_method(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``--worker`` (a method name) and read its peak memory."""
    import torch

    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run = timed_train.timed_train(student_tree(args, args.worker, args.teacher_dir))
    baseline = 0.0 if cuda else run.baseline_rss_mib
    return {
        **benchlib.steady_stats(run.marks, args.warmup, BATCH),
        "precision": run.summary["precision"],
        "extra_params": run.summary["extra_params"],
        "baseline_mib": baseline,
        "peak_mib": run.peak_mib[-1],
        "peak_delta_mib": run.peak_mib[-1] - baseline,
    }


# ---------------------------------------------------------------- the parent: schedule, aggregate, report
def worker_argv(args: argparse.Namespace, worker: str, teacher_dir: str = "") -> list[str]:
    return [benchlib.this_python(), str(Path(__file__).resolve()), "--worker", worker,
            "--teacher-dir", teacher_dir, "--warmup", str(args.warmup), "--steps", str(args.steps),
            "--teacher-steps", str(args.teacher_steps), "--seed", str(args.seed),
            "--threads", str(args.threads), "--device", args.device, "--work-dir", args.work_dir]


def ensure_teacher(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """The teacher's run (trained now unless ``--work-dir`` already holds it)."""
    record = Path(args.work_dir) / "teacher.json"
    if record.is_file():
        return json.loads(record.read_text())
    started = time.perf_counter()
    result = benchlib.run_worker(worker_argv(args, "teacher"), log_dir / "teacher.log")
    result["train_s"] = round(time.perf_counter() - started, 1)
    record.write_text(json.dumps(result) + "\n")
    return result


def summarize(runs: dict[str, list[dict[str, Any]]], cores: int) -> dict[str, dict[str, Any]]:
    """Per method: medians over repeats of img/s, img per CPU-second and peak memory over the baseline."""
    out = {}
    for name, results in runs.items():
        rates = [r["img_per_s"] for r in results]
        per_cpu = [r["img_per_s"] / max(r["cpu_share"] * cores, 1e-9) for r in results]
        peaks = [r["peak_delta_mib"] for r in results]
        out[name] = {
            "img_per_s_median": round(benchlib.median(rates), 2),
            "img_per_s_all": [round(v, 2) for v in rates],
            "img_per_cpu_s_median": round(benchlib.median(per_cpu), 2),
            "peak_delta_mib_median": round(benchlib.median(peaks), 1),
            "peak_delta_mib_all": [round(v, 1) for v in peaks],
            "peak_mib_median": round(benchlib.median([r["peak_mib"] for r in results]), 1),
            "cpu_share_min": min(r["cpu_share"] for r in results),
            "extra_params": results[0]["extra_params"],
        }
    return out


def report(stats: dict[str, dict[str, Any]], measured: dict[str, str], device: str) -> str:
    """The markdown table: each method's medians and its ratios to ``kd``."""
    kd = stats["kd"]
    rows = []
    for name, s in stats.items():
        rows.append([
            f"`{name}`", measured[name], f"{s['extra_params']:,}",
            f"{s['img_per_s_median']:.1f} ({benchlib.spread(s['img_per_s_all'])})",
            f"{s['img_per_s_median'] / kd['img_per_s_median']:.2f}",
            f"{s['img_per_cpu_s_median'] / kd['img_per_cpu_s_median']:.2f}",
            f"{s['peak_delta_mib_median']:.0f} ({benchlib.spread(s['peak_delta_mib_all'])})",
            f"{s['peak_delta_mib_median'] / kd['peak_delta_mib_median']:.2f}",
            f"{s['cpu_share_min']:.2f}",
        ])
    memory = "peak CUDA MiB allocated" if device == "cuda" else "peak RSS MiB over imports"
    return benchlib.markdown_table(
        ["method", "measured", "extra params", "img/s", "img/s x KD", "img/CPU-s x KD", memory,
         "memory x KD", "min CPU share"], rows)


def main_parent(args: argparse.Namespace) -> None:
    machine = benchlib.machine_info()
    log_dir = Path(args.work_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    teacher = ensure_teacher(args, log_dir)
    print(f"teacher {TEACHER}: {teacher['run_dir']}, synthetic test top-1 {teacher['test_top1']:.2f}",
          flush=True)
    plan = [list(args.methods) if r % 2 == 0 else list(args.methods)[::-1] for r in range(args.repeats)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.methods}
    count, done = sum(len(order) for order in plan), 0
    for repeat, order in enumerate(plan):
        for name in order:
            idle = benchlib.wait_for_idle(args.idle_wait, args.idle_threshold)
            result = benchlib.run_worker(worker_argv(args, name, teacher["run_dir"]),
                                         log_dir / f"{name}_r{repeat}.log")
            result.update(idle)
            runs[name].append(result)
            done += 1
            print(f"[{done}/{count} {time.perf_counter() - started:6.0f}s] repeat {repeat} {name:10s} "
                  f"{result['img_per_s']:7.1f} img/s  peak +{result['peak_delta_mib']:.0f} MiB  "
                  f"CPU share {result['cpu_share']:.2f}  (waited {idle['waited_s']:.0f} s for idle)",
                  flush=True)
    stats = summarize(runs, machine["cores"])
    measured = {name: method_setup(name)[2] for name in args.methods}
    table = report(stats, measured, args.device)
    machine["loadavg_at_end"] = os.getloadavg()
    header = (f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
              f"device {args.device} ({args.threads or machine['torch_threads']} threads per run); "
              f"{TEACHER} -> {STUDENT}, batch {BATCH}, {NUM_CLASSES} classes, {args.warmup} warm-up + "
              f"{args.steps} timed steps per run, {args.repeats} interleaved repeats, medians (min..max); "
              f"total {time.perf_counter() - started:.0f} s\n")
    print("\n" + header + "\n" + table)
    benchlib.write_result(args.out, "method_cost", {
        "machine": machine,
        "settings": {"teacher": TEACHER, "student": STUDENT, "num_classes": NUM_CLASSES, "batch_size": BATCH,
                     "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
                     "threads": args.threads or machine["torch_threads"], "device": args.device,
                     "teacher_steps": args.teacher_steps, "optim": recipe()},
        "teacher": teacher,
        "measured": measured,
        "summary": stats,
        "runs": runs,
        "table_markdown": table,
    }, started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every method")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; must include kd")
    parser.add_argument("--teacher-steps", type=int, default=300, help="cross-entropy steps of the teacher")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads in every run (0: torch's default, one per core)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--idle-wait", type=float, default=30,
                        help="before each run, wait up to this many seconds for other processes to go quiet")
    parser.add_argument("--idle-threshold", type=float, default=0.15,
                        help="'quiet': other processes use less than this share of the machine's CPU")
    parser.add_argument("--work-dir", default="/tmp/kdlab-bench-methods",
                        help="the teacher's run (reused when present) and per-run worker logs")
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "methods.json"))
    # internal: one measurement in this process
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--teacher-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.methods = tuple(m for m in args.methods.split(",") if m)
    if "kd" not in args.methods:
        parser.error("--methods must include kd (the reference of every ratio)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None and args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker == "teacher":
        benchlib.emit(worker_teacher(args))
    elif args.worker is not None:
        benchlib.emit(worker_method(args))
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
