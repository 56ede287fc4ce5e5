"""Teacher forward, eager vs kdlab's fast path (``teacher.fast``), per model, on this machine.

Each teacher is built with random weights and random BatchNorm statistics (so that folding changes every
weight), put in eval mode without gradients, and run under no-grad on a fixed random batch:

  eager: the plain eval-mode teacher in ``channels_last``, as the Trainer runs it with ``teacher.fast: false``
         (``train.channels_last`` is on by default);
  fast:  the same teacher through ``kdlab.methods.base.FrozenTeacher.speed_up`` with the plan the Trainer
         resolves from the default ``teacher.fast`` and ``train`` settings at ``precision: auto`` on this
         machine (``kdlab.engine.teacher_fast.teacher_plan``): BatchNorm folded, weights cast to the
         autocast dtype (none in fp32), channels_last, compiled only when ``train.compile`` is on.

The forward runs under the resolved precision's autocast, as in a training step. Each repeat runs every
teacher in its own subprocess (teachers in reverse order on odd repeats); that process builds both
variants from the same weights, warms each up, then times them in alternating rounds (eager first on even
rounds, fast first on odd ones). A repeat's figure is the median of its timed forwards, in wall time and
in this process's CPU time (the undisturbed cost when other jobs share the machine: one thread per run);
the report gives the median over repeats with min..max of the per-repeat ratios, and the largest relative
logit difference between the variants.

Usage: python benchmarks/teacher_forward.py [--models resnet56,...] [--repeats 3] [--threads 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path
from typing import Any

import benchlib

#: (model, batch, image side, classes): the CIFAR teachers at 32 px, torchvision's ResNet-50 at 224 px
MODELS = {
    "resnet56": (64, 32, 100),
    "resnet110": (64, 32, 100),
    "resnet32x4": (64, 32, 100),
    "wrn_40_2": (64, 32, 100),
    "vgg13": (64, 32, 100),
    "torchvision:resnet50": (16, 224, 1000),
}


def random_statistics(model, seed: int):
    """Random BN running statistics and affine parameters (a trained teacher's are not 0/1)."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval().requires_grad_(False)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """The variants of one teacher in this process, timed in alternating rounds after warm-up."""
    import torch

    from kdlab.config.schema import TeacherFastConfig, TrainConfig
    from kdlab.engine.precision import resolve_precision
    from kdlab.engine.teacher_fast import teacher_plan
    from kdlab.methods.base import FrozenTeacher
    from kdlab.models import build_model

    batch, side, classes = MODELS[args.model]
    torch.manual_seed(args.seed)
    eager = random_statistics(build_model(args.model, classes), args.seed)
    fast = copy.deepcopy(eager)
    eager.to(memory_format=torch.channels_last)
    train = TrainConfig()
    precision = resolve_precision(train.precision, torch.device("cpu"))
    plan = teacher_plan(TeacherFastConfig(), train, precision)
    started = time.perf_counter()
    notes = FrozenTeacher(fast).speed_up(plan, (3, side, side))
    prepare_s = time.perf_counter() - started
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    models = {"eager": eager, "fast": fast}
    if args.off:
        models["off"] = copy.deepcopy(eager).to(memory_format=torch.contiguous_format)
        off_plan = teacher_plan(TeacherFastConfig.model_validate(False), train, precision)
        FrozenTeacher(models["off"]).speed_up(off_plan, (3, side, side))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    with torch.no_grad(), precision.autocast():
        expected, actual = eager(x).float(), fast(x).float()
        for model in models.values():
            for _ in range(args.warmup):
                model(x)
        for round_ in range(args.rounds):
            for name in list(models) if round_ % 2 == 0 else list(models)[::-1]:
                for _ in range(args.iters):
                    wall0, cpu0 = time.perf_counter(), time.process_time()
                    models[name](x)
                    times[name].append((time.perf_counter() - wall0, time.process_time() - cpu0))
    result: dict[str, Any] = {
        "batch": batch, "image": side, "precision": precision.name, "prepare_s": round(prepare_s, 3),
        "max_rel_diff": ((actual - expected).abs().max() / expected.abs().max()).item(), "notes": notes}
    for name, pairs in times.items():
        wall = [t for t, _ in pairs]
        result[name] = {"ms": statistics.median(wall) * 1e3, "ms_all": [round(t * 1e3, 3) for t in wall],
                        "cpu_ms": statistics.median(c for _, c in pairs) * 1e3,
                        "cpu_share": round(sum(c for _, c in pairs) / (sum(wall) * (os.cpu_count() or 1)), 3)}
    return result


def main_parent(args: argparse.Namespace) -> None:
    machine = benchlib.machine_info()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    plan = [args.models if r % 2 == 0 else args.models[::-1] for r in range(args.repeats)]
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {}
    for repeat, order in enumerate(plan):
        for model in order:
            argv = [benchlib.this_python(), str(Path(__file__).resolve()), "--worker", "--model", model,
                    "--threads", str(args.threads), "--warmup", str(args.warmup),
                    "--rounds", str(args.rounds), "--iters", str(args.iters), "--seed", str(args.seed),
                    *(["--off"] if args.off else [])]
            log = log_dir / f"{model.replace(':', '_')}_r{repeat}.log"
            result = benchlib.run_worker(argv, log)
            result["loadavg"] = os.getloadavg()[0]
            runs.setdefault(model, []).append(result)
            print(f"[{time.perf_counter() - started:6.0f}s] repeat {repeat} {model:22s} eager "
                  f"{result['eager']['ms']:8.2f} ms, fast {result['fast']['ms']:8.2f} ms "
                  f"(CPU share {result['eager']['cpu_share']:.2f}/{result['fast']['cpu_share']:.2f}, "
                  f"load {result['loadavg']:.2f})", flush=True)
    rows, summary = [], {}
    for model in args.models:
        results = runs[model]
        eager, fast = ([r[v]["ms"] for r in results] for v in ("eager", "fast"))
        e_ms, f_ms = benchlib.median(eager), benchlib.median(fast)
        ratios = [a / b for a, b in zip(eager, fast, strict=True)]
        e_cpu, f_cpu = (benchlib.median([r[v]["cpu_ms"] for r in results]) for v in ("eager", "fast"))
        cpu_ratios = [r["eager"]["cpu_ms"] / r["fast"]["cpu_ms"] for r in results]
        diff = max(r["max_rel_diff"] for r in results)
        shares = [r[v]["cpu_share"] for r in results for v in ("eager", "fast")]
        summary[model] = {"eager_ms": round(e_ms, 3), "fast_ms": round(f_ms, 3),
                          "eager_over_fast": round(e_ms / f_ms, 3),
                          "eager_over_fast_per_repeat": [round(v, 3) for v in ratios],
                          "eager_cpu_ms": round(e_cpu, 3), "fast_cpu_ms": round(f_cpu, 3),
                          "eager_over_fast_cpu": round(e_cpu / f_cpu, 3),
                          "eager_over_fast_cpu_per_repeat": [round(v, 3) for v in cpu_ratios],
                          "max_rel_diff": diff, "cpu_share_min": min(shares), "notes": results[0]["notes"]}
        side = results[0]["image"]
        rows.append([model, results[0]["batch"], f"{side}x{side}", results[0]["precision"],
                     f"{e_ms:.2f} ({benchlib.spread(eager)})", f"{f_ms:.2f} ({benchlib.spread(fast)})",
                     f"{e_ms / f_ms:.2f} ({min(ratios):.2f}..{max(ratios):.2f})",
                     f"{e_cpu:.2f}", f"{f_cpu:.2f}",
                     f"{e_cpu / f_cpu:.2f} ({min(cpu_ratios):.2f}..{max(cpu_ratios):.2f})", f"{diff:.1e}",
                     f"{min(shares):.2f}"])
    table = benchlib.markdown_table(
        ["teacher", "batch", "image", "precision", "eager ms", "fast ms", "eager / fast (wall)",
         "eager CPU ms", "fast CPU ms", "eager / fast (CPU)", "max rel. logit diff", "min CPU share"], rows)
    if args.off:
        rows = []
        for model in args.models:
            results = runs[model]
            off_cpu = benchlib.median([r["off"]["cpu_ms"] for r in results])
            per_repeat = [r["off"]["cpu_ms"] / r["fast"]["cpu_ms"] for r in results]
            to_eager = [r["off"]["cpu_ms"] / r["eager"]["cpu_ms"] for r in results]
            summary[model].update(off_cpu_ms=round(off_cpu, 3), off_over_fast_cpu_per_repeat=per_repeat,
                                  off_over_eager_cpu_per_repeat=to_eager)
            rows.append([model, f"{off_cpu:.2f}", f"{benchlib.median(per_repeat):.2f}",
                         f"{benchlib.median(to_eager):.2f}"])
        table += "\n\nteacher.fast: false as the Trainer runs it (NCHW weights, channels_last inputs):\n\n"
        table += benchlib.markdown_table(
            ["teacher", "off CPU ms", "off / fast (CPU)", "off / eager (CPU)"], rows)
    machine["loadavg_at_end"] = os.getloadavg()
    print("\n" + table)
    benchlib.write_result(args.out, "teacher_forward", {
        "machine": machine,
        "settings": {"models": args.models, "off": args.off, "repeats": args.repeats, "threads": args.threads,
                     "warmup": args.warmup, "rounds": args.rounds, "iters": args.iters, "seed": args.seed},
        "summary": summary, "runs": runs, "table_markdown": table}, started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards of each variant per run")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating rounds of the two variants per run")
    parser.add_argument("--iters", type=int, default=2, help="timed forwards of a variant per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "teacher_forward.json"))
    parser.add_argument("--log-dir", default="/tmp/kdlab-bench-teacher-forward", help="per-run worker logs")
    parser.add_argument("--off", action="store_true",
                        help="also time the teacher as the Trainer runs it under teacher.fast: false")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; expected some of {', '.join(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.worker:
        main_parent(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    benchlib.emit(worker(args))


if __name__ == "__main__":
    main()
