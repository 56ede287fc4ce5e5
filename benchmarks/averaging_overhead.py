"""Cost of dense weight averaging: training steps with an averaged copy updated every step, as a ratio
to the same training without averaging, measured side by side in one process.

A torchvision ResNet-18 (11.7M parameters) trained with cross-entropy on synthetic images through
``kdlab.run.train`` (SGD, the chosen precision, channels_last), with ``averaging.strategy`` set to
``none`` (the baseline), ``wakd`` from the first step (a uniform running mean: one ``_foreach_lerp_``
over the weights per step) and ``ema`` (the same op with a fixed weight). SWAD's and SMA's per-step work
is the same uniform update (SWAD adds a validation pass every ``nu`` steps, which is evaluation cost).
Variants are interleaved and repeated; the median steady-state step time is reported, from the end of
the warm-up steps to the last step, both in wall-clock time and in this process's CPU time (on a shared
machine the wall clock mostly measures the other processes; CPU time per step is the steadier
measure). The update alone (``AveragedModel.add``) is also timed in isolation, in CPU time.

Usage: python benchmarks/averaging_overhead.py [--image-size 224 --batch 32 --steps 4 --warmup 1 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import benchlib

VARIANTS = {"none": {}, "wakd": {"start_fraction": 0.0}, "ema": {"decay": 0.999}}


def tree(args: argparse.Namespace, strategy: str) -> dict[str, Any]:
    total = args.warmup + args.steps
    return {
        "data": {"name": "synthetic", "batch_size": args.batch, "val_fraction": 0.0,
                 "image_size": args.image_size,
                 "options": {"num_classes": 10, "num_train": args.batch * total, "num_test": 16}},
        "student": {"name": "torchvision:resnet18"},
        "method": {"name": "ce"},
        "optim": {"name": "sgd", "lr": 0.01},
        "schedule": {"name": "constant"},
        "train": {"steps": total, "eval_every": total, "precision": args.precision, "channels_last": True,
                  "device": "cpu", "progress": False, "log_every": 1000},
        "averaging": {"strategy": strategy, "params": VARIANTS[strategy]},
    }


def timed_run(args: argparse.Namespace, strategy: str) -> dict[str, Any]:
    from kdlab.config import validate
    from kdlab.engine import Callback
    from kdlab.run import train

    class StepClock(Callback):
        name = "step_clock"

        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []

        def on_step_end(self, trainer) -> None:
            self.marks.append(benchlib.mark())

    clock = StepClock()
    train(validate(tree(args, strategy), "benchmark"), callbacks=[clock], write=False)
    stats = benchlib.steady_stats(clock.marks, args.warmup, args.batch)
    (_, cpu0), (_, cpu1) = clock.marks[args.warmup - 1], clock.marks[-1]
    return {"step_s": args.batch / stats["img_per_s"], "cpu_step_s": (cpu1 - cpu0) / args.steps,
            "cpu_share": stats["cpu_share"]}


def update_alone(repeats: int = 30) -> float:
    """Median CPU seconds of one uniform-average update of a ResNet-18, in place."""
    import torch

    from kdlab.engine.averaging.weights import AveragedModel
    from kdlab.models import build_model

    model = build_model("torchvision:resnet18", 10).to(memory_format=torch.channels_last)
    average = AveragedModel(model, "average")
    times = []
    for _ in range(repeats + 3):
        started = time.process_time()
        average.add()
        times.append(time.process_time() - started)
    return statistics.median(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    info = benchlib.machine_info()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        order = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            results[name].append(timed_run(args, name))
            print(f"repeat {repeat} {name}: {results[name][-1]}", flush=True)
    update_s = update_alone()
    base = statistics.median(r["step_s"] for r in results["none"])
    base_cpu = statistics.median(r["cpu_step_s"] for r in results["none"])
    rows = []
    for name, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        cpu = statistics.median(r["cpu_step_s"] for r in runs)
        shares = [r["cpu_share"] for r in runs]
        rows.append([name, f"{1000 * step:.0f}", f"{step / base:.3f}", f"{1000 * cpu:.0f}",
                     f"{cpu / base_cpu:.3f}", f"{min(shares):.2f}..{max(shares):.2f}"])
    header = ["averaging", "wall ms/step", "wall ratio", "CPU ms/step", "CPU ratio", "cpu share"]
    print(benchlib.markdown_table(header, rows))
    print(f"\nuniform update alone (ResNet-18, 11.7M parameters): {1000 * update_s:.1f} ms CPU "
          f"= {100 * update_s / base_cpu:.1f}% of the baseline step's CPU time")
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "args": vars(args) | {"out": str(args.out)},
                                        "runs": results, "update_alone_s": update_s}, indent=2))


if __name__ == "__main__":
    main()
