"""The 240-epoch CIFAR KD recipe end to end on one GPU: wall time, img/s and accuracy.

Timing: resnet32x4 -> resnet8x4, Hinton KD, the CIFAR-100 recipe of ``configs/cifar100`` (SGD 0.05,
batch 64, 240 epochs, milestones 150/180/210) on a CIFAR-100-sized synthetic set (50,000 training and
10,000 test 32x32 images, 100 classes; a randomly initialized teacher saved to disk, which times the
same as a trained one). Variants, each a full run:

  defaults     bf16 autocast, channels_last, device-resident data (kdlab's defaults)
  compile      + ``train.compile`` (torch.compile, mode default)
  cudagraphs   + ``train.compile_mode: reduce-overhead`` (CUDA graphs)
  cached       defaults + a replayable teacher cache of 240 epochs (its fill time is reported apart)

Accuracy: the same recipe on CIFAR-10 from ``../shared/data/cifar10/cifar10-jpeg.tar.gz`` (10 classes):
the resnet32x4 teacher trained with CE, then the KD student, test top-1 of the last epoch.

Usage (GPU): python benchmarks/gpu_recipe.py [--variants defaults,compile,cudagraphs,cached] [--accuracy]
Smoke test (CPU): python benchmarks/gpu_recipe.py --epochs 1 --num-train 512 --subset 512 --device cpu \
    --accuracy --out /tmp/gpu_recipe.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib

RECIPE = benchlib.REPO / "configs" / "cifar100" / "kd_resnet32x4_resnet8x4.yaml"
CIFAR10 = benchlib.REPO.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar.gz"
VARIANTS = {
    "defaults": [],
    "compile": ["train.compile=true"],
    "cudagraphs": ["train.compile=true", "train.compile_mode=reduce-overhead"],
    "cached": [],
}


def recipe(args: argparse.Namespace, work: Path, overrides: list[str]) -> Any:
    from kdlab.config import load_config

    common = [f"train.epochs={args.epochs}", f"train.device={args.device}", "train.progress=false",
              f"out_dir={work / 'runs'}", "schedule.milestones=" + json.dumps(
                  [round(args.epochs * m / 240) or 1 for m in (150, 180, 210)])]
    return load_config(RECIPE, common + overrides)


def synthetic(args: argparse.Namespace) -> list[str]:
    options = {"num_classes": 100, "num_train": args.num_train, "num_test": 10000}
    return ["data.name=synthetic", "data.root=null", "data.options=" + json.dumps(options)]


def timed(config: Any) -> dict[str, Any]:
    from kdlab.run import train

    started = time.perf_counter()
    summary = train(config).summary
    return {"wall_s": round(time.perf_counter() - started, 1), "train_s": summary["train_time_s"],
            "img_per_s": summary["img_per_s"], "test_top1": summary["test_last"]["top1"]}


def timing(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from kdlab.models import build_model
    from kdlab.teacher_cache import fill_teacher_cache

    torch.manual_seed(0)
    teacher = work / "teacher.pt"
    torch.save(build_model("resnet32x4", 100).state_dict(), teacher)
    results: dict[str, Any] = {}
    for variant in args.variants.split(","):
        overrides = [*synthetic(args), f"teacher.checkpoint={teacher}", f"name=timing-{variant}",
                     *VARIANTS[variant]]
        if variant == "cached":
            cache = {"path": str(work / "cache"), "epochs": args.epochs}
            overrides.append("teacher_cache=" + json.dumps(cache))
            started = time.perf_counter()
            fill_teacher_cache(recipe(args, work, overrides))
            results["cache_fill_s"] = round(time.perf_counter() - started, 1)
        results[variant] = timed(recipe(args, work, overrides))
        print(variant, results[variant], flush=True)
    return results


def accuracy(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = [f"data.root={CIFAR10}", "data.name=imagefolder", "data.mean=[0.4914, 0.4822, 0.4465]",
            "data.std=[0.2470, 0.2435, 0.2616]"]
    if args.subset:
        data.append(f"data.subset={args.subset}")
    teacher = recipe(args, work, [*data, "name=acc-teacher", 'method={"name": "ce"}', "teacher=null",
                                  "student.name=resnet32x4"])
    results = {"teacher": timed(teacher)}
    teacher_run = work / "runs" / "acc-teacher"
    student = recipe(args, work, [*data, "name=acc-kd", f"teacher.checkpoint={teacher_run}"])
    results["kd"] = timed(student)
    print("accuracy", results, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=240)
    parser.add_argument("--num-train", type=int, default=50000, help="synthetic training images")
    parser.add_argument("--subset", type=int, help="CIFAR-10 training images of --accuracy (default: all)")
    parser.add_argument("--variants", default="defaults,compile,cudagraphs,cached")
    parser.add_argument("--accuracy", action="store_true", help="also the CIFAR-10 accuracy run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "gpu_recipe.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kdlab-gpu-recipe-"))
    results = {"machine": benchlib.machine_info(), "args": vars(args)}
    if args.variants:
        results["timing"] = timing(args, work)
    if args.accuracy:
        results["accuracy"] = accuracy(args, work)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
