"""Teacher cache and data path throughput: cached KD vs live-teacher KD vs CE-only, resident vs DataLoader.

resnet32x4 (teacher) -> resnet8x4, batch 64, synthetic 32x32 images with 100 classes and the CIFAR
crop/flip augmentation, SGD, Hinton KD (ce 0.1 + kd 0.9, T 4), the Trainer's defaults (bf16 where the
CPU has it, channels_last). Variants, each a ``kdlab.run.train`` run of the same steps:

  ce           the student alone: the floor any KD run is compared against
  kd-live      KD with the teacher run on every batch
  kd-cached    KD reading a replayable teacher cache (filled once before timing; its fill rate is reported)
  ce-loader    CE through the DataLoader path (``device_resident: off``, ``num_workers`` workers)
  ens-live     KD from an ensemble of 4 resnet32x4 teachers (``ensemble_kd``, T 4), every teacher run on
               every batch (the default loop on CPU)
  ens-cached   the same, reading every member's logits from a replayable teacher cache

Variants run in this process, interleaved (the order reversed on every other repeat); the median of the
repeats is reported with min..max. Throughput is the steady state after the warm-up steps.

Usage: python benchmarks/teacher_cache.py [--steps 30 --warmup 5 --repeats 3 --threads 2]
       [--variants ce,kd-live,kd-cached,ce-loader,ens-live,ens-cached]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
import timed_train

TEACHER, STUDENT, NUM_CLASSES, BATCH = "resnet32x4", "resnet8x4", 100, 64
OPTIM = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
KD = {"name": "kd", "weights": {"ce": 0.1, "kd": 0.9}, "params": {"temperature": 4.0}}
ENSEMBLE_KD = {"name": "ensemble_kd", "weights": {"ce": 0.0, "kd": 1.0}, "params": {"temperature": 4.0}}
MEMBERS = 4
VARIANTS = ("ce", "kd-live", "kd-cached", "ce-loader", "ens-live", "ens-cached")


def tree(variant: str, total: int, teacher_paths: list[str], cache_path: str, workers: int) -> dict[str, Any]:
    method = {"name": "ce"} if variant.startswith("ce") else ENSEMBLE_KD if variant.startswith("ens") else KD
    config = timed_train.synthetic_tree(student=STUDENT, teacher=None, method=method, num_classes=NUM_CLASSES,
                                        batch_size=BATCH, total_steps=total, optim=OPTIM)
    config["data"]["augment"] = "standard"
    config["train"]["progress"] = False
    if variant.startswith("kd"):
        config["teacher"] = {"name": TEACHER, "checkpoint": teacher_paths[0]}
    if variant.startswith("ens"):
        config["teachers"] = [{"name": TEACHER, "checkpoint": path} for path in teacher_paths]
    if variant.endswith("cached"):
        config["teacher_cache"] = {"path": f"{cache_path}-{variant}", "epochs": 1, "batch_size": 256}
    if variant == "ce-loader":
        config["data"]["device_resident"] = "off"
        config["data"]["num_workers"] = workers
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of ce-loader")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; must include ce")
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "teacher_cache.json"))
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if "ce" not in variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants: a subset of {','.join(VARIANTS)} that includes ce")

    import torch

    from kdlab.config import validate
    from kdlab.models import build_model
    from kdlab.teacher_cache import fill_teacher_cache

    if args.threads:
        torch.set_num_threads(args.threads)
    total = args.warmup + args.steps
    work = Path(tempfile.mkdtemp(prefix="kdlab-bench-cache-"))
    teacher_paths = []
    for member in range(MEMBERS):
        torch.manual_seed(member)
        teacher_paths.append(str(work / f"teacher{member}.pt"))
        torch.save(build_model(TEACHER, NUM_CLASSES).state_dict(), teacher_paths[-1])
    cache_path = str(work / "cache")
    fill_img_s = {}
    for variant in (v for v in variants if v.endswith("cached")):
        started = time.perf_counter()
        fill_teacher_cache(validate(tree(variant, total, teacher_paths, cache_path, args.workers), "bench"))
        fill_img_s[variant] = round(total * BATCH / (time.perf_counter() - started), 1)

    runs: dict[str, list[float]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            run = timed_train.timed_train(tree(variant, total, teacher_paths, cache_path, args.workers))
            runs[variant].append(benchlib.steady_stats(run.marks, args.warmup, BATCH)["img_per_s"])
    ce = benchlib.median(runs["ce"])
    rows = [[v, f"{benchlib.median(runs[v]):.0f} ({benchlib.spread(runs[v])})",
             f"{benchlib.median(runs[v]) / ce:.2f}"] for v in variants]
    table = benchlib.markdown_table(["variant", "img/s", "vs ce"], rows)
    machine = benchlib.machine_info()
    print(json.dumps(machine))
    print(f"cache fill (teacher forwards + writes, includes start-up), img/s: {fill_img_s}\n")
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "fill_img_per_s": fill_img_s,
                               "img_per_s": runs, "table": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
