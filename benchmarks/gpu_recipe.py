"""The 240-epoch CIFAR KD recipe end to end on one GPU: wall time, img/s and accuracy.

Timing: resnet32x4 -> resnet8x4, Hinton KD, the CIFAR-100 recipe of ``configs/cifar100`` (SGD 0.05,
batch 64, 240 epochs, milestones 150/180/210) on a CIFAR-100-sized synthetic set (50,000 training and
10,000 test 32x32 images, 100 classes; a randomly initialized teacher saved to disk, which times the
same as a trained one). Variants, each a full run:

  defaults     bf16 autocast, channels_last, device-resident data (kdlab's defaults)
  compile      + ``train.compile`` (torch.compile, mode default)
  cudagraphs   + ``train.compile_mode: reduce-overhead`` (CUDA graphs)
  cached       defaults + a replayable teacher cache of the epochs trained (its fill time is reported
               apart, and projected to the whole schedule like the training time)

Accuracy: the same recipe on CIFAR-10 (``--cifar10``, by default
``../shared/data/cifar10/cifar10-jpeg.tar.gz``; 10 classes): the resnet32x4 teacher trained with CE, then
the KD student, test top-1 of the last epoch.

``--timed-epochs N`` runs only the first N epochs of each timing variant and projects the whole schedule
from them: ``projected_s = wall_s + (epochs - N) * steady_epoch_s``, where ``steady_epoch_s`` is the
median time of epochs 2..N (the first holds compilation and warm-up), taken at a device synchronization
at each epoch's end. This is how a session with a few minutes of GPU time measures a 240-epoch run.

Usage (GPU): python benchmarks/gpu_recipe.py [--variants defaults,compile,cudagraphs,cached] [--accuracy]
    [--timed-epochs 4]
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

from kdlab.engine.callbacks import Callback

RECIPE = benchlib.REPO / "configs" / "cifar100" / "kd_resnet32x4_resnet8x4.yaml"
CIFAR10 = benchlib.REPO.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar.gz"
VARIANTS = {
    "defaults": [],
    "compile": ["train.compile=true"],
    "cudagraphs": ["train.compile=true", "train.compile_mode=reduce-overhead"],
    "cached": [],
}


def recipe(args: argparse.Namespace, work: Path, overrides: list[str], run_epochs: int | None = None) -> Any:
    """The recipe with ``overrides``, its lr milestones scaled to ``--epochs``; ``run_epochs`` (default:
    all of them) is how many epochs of that schedule are trained."""
    from kdlab.config import load_config

    milestones = [round(args.epochs * m / 240) or 1 for m in (150, 180, 210)]
    common = [f"train.epochs={run_epochs or args.epochs}", f"train.device={args.device}",
              "train.progress=false", f"out_dir={work / 'runs'}", f"schedule.milestones={milestones}"]
    return load_config(RECIPE, common + overrides)


def synthetic(args: argparse.Namespace) -> list[str]:
    options = {"num_classes": 100, "num_train": args.num_train, "num_test": 10000}
    return ["data.name=synthetic", "data.root=null", "data.options=" + json.dumps(options)]


class EpochClock(Callback):
    """The time at the end of every epoch, after the device has finished its queued work."""

    name = "epoch_clock"

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_fit_start(self, trainer: Any) -> None:
        self.start = self._now(trainer)

    def on_epoch_end(self, trainer: Any) -> None:
        self.ends.append(self._now(trainer))

    @staticmethod
    def _now(trainer: Any) -> float:
        import torch

        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        return time.perf_counter()

    def epoch_seconds(self) -> list[float]:
        return [round(b - a, 3) for a, b in zip([self.start, *self.ends], self.ends, strict=False)]


def timed(config: Any, schedule_epochs: int | None = None) -> dict[str, Any]:
    """Train ``config``; with ``schedule_epochs``, also project the wall time of that many epochs."""
    from kdlab.run import train

    clock = EpochClock()
    started = time.perf_counter()
    summary = train(config, callbacks=[clock]).summary
    wall = time.perf_counter() - started
    epochs = clock.epoch_seconds()
    result = {"wall_s": round(wall, 1), "train_s": summary["train_time_s"], "img_per_s": summary["img_per_s"],
              "test_top1": summary["test_last"]["top1"], "epoch_s": epochs}
    if schedule_epochs is not None and len(epochs) >= 2:
        steady = benchlib.median(epochs[1:])
        images_per_epoch = summary["steps"] * config.data.batch_size / len(epochs)
        result |= {"steady_epoch_s": round(steady, 3),
                   "steady_img_per_s": round(images_per_epoch / steady, 1),
                   "projected_s": round(wall + (schedule_epochs - len(epochs)) * steady, 1)}
    return result


def timing(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from kdlab.models import build_model
    from kdlab.teacher_cache import fill_teacher_cache

    torch.manual_seed(0)
    teacher = work / "teacher.pt"
    torch.save(build_model("resnet32x4", 100).state_dict(), teacher)
    results: dict[str, Any] = {}
    run_epochs = args.timed_epochs or args.epochs
    for variant in args.variants.split(","):
        overrides = [*synthetic(args), f"teacher.checkpoint={teacher}", f"name=timing-{variant}",
                     *VARIANTS[variant]]
        if variant == "cached":
            cache = {"path": str(work / "cache"), "epochs": run_epochs}
            overrides.append("teacher_cache=" + json.dumps(cache))
            started = time.perf_counter()
            fill_teacher_cache(recipe(args, work, overrides, run_epochs))
            fill = time.perf_counter() - started
            results["cache_fill"] = {"epochs": run_epochs, "wall_s": round(fill, 1),
                                     "projected_s": round(fill * args.epochs / run_epochs, 1)}
        results[variant] = timed(recipe(args, work, overrides, run_epochs), args.epochs)
        print(variant, results[variant], flush=True)
    return results


def accuracy(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = [f"data.root={args.cifar10}", "data.name=imagefolder", "data.mean=[0.4914, 0.4822, 0.4465]",
            "data.std=[0.2470, 0.2435, 0.2616]"]
    if args.subset:
        data.append(f"data.subset={args.subset}")
    data += VARIANTS[args.accuracy_variant]
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
    parser.add_argument("--timed-epochs", type=int, help="time only this many epochs of each timing "
                        "variant and project the whole schedule (default: run it all)")
    parser.add_argument("--cifar10", default=str(CIFAR10), help="the CIFAR-10 JPEG tarball of --accuracy")
    parser.add_argument("--subset", type=int, help="CIFAR-10 training images of --accuracy (default: all)")
    parser.add_argument("--variants", default="defaults,compile,cudagraphs,cached")
    parser.add_argument("--accuracy", action="store_true", help="also the CIFAR-10 accuracy run")
    parser.add_argument("--accuracy-variant", default="defaults",
                        choices=["defaults", "compile", "cudagraphs"],
                        help="the settings of this timing variant for the accuracy runs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "gpu_recipe.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="kdlab-gpu-recipe-"))
    results = {"machine": benchlib.machine_info(), "args": vars(args)}
    if args.variants:
        results["timing"] = timing(args, work)
    if args.accuracy:
        results["accuracy"] = accuracy(args, work)
    benchlib.write_result(args.out, "gpu_recipe", results, started)


if __name__ == "__main__":
    main()
