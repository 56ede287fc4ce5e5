"""Teacher ensembles: one batched call (torch.func stack_module_state + functional_call + vmap) vs a
Python loop over the members, on this machine.

M identical small teachers in eval mode, forward pass under no-grad (what a distillation step pays per
batch), the same random input for both paths. Both paths go through
``kdlab.ensemble.TeacherEnsemble.member_logits`` (``batched=True`` / ``batched=False``), so the
stacked-weight bookkeeping is included. Paths alternate within each repeat (loop, batched; then
batched, loop) and the median time per call over ``--repeats`` is reported, with ``loop / batched``
as the speed-up (> 1: the batched call is faster). Also checks that both paths give the same logits.

Usage: python benchmarks/ensemble_teachers.py [--members 4 --repeats 7 --min-time 0.5] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import benchlib
import torch

from kdlab.ensemble import TeacherEnsemble
from kdlab.models import build_model

# (teacher, input shape, batch): MNIST-sized small CNNs and a CIFAR ResNet-8.
CASES = [
    ("cnn_tiny", (1, 28, 28), 32),
    ("cnn_tiny", (1, 28, 28), 128),
    ("cnn_small", (1, 28, 28), 32),
    ("cnn_small", (1, 28, 28), 128),
    ("resnet8", (3, 32, 32), 64),
]


def time_call(fn, min_time: float) -> float:
    """Seconds per call, averaged over as many calls as fit in ``min_time`` (after one warm-up call)."""
    fn()
    calls, started = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_time:
            return elapsed / calls


def measure(name: str, shape: tuple[int, ...], batch: int, members: int, precision: str,
            repeats: int, min_time: float) -> dict[str, Any]:
    torch.manual_seed(0)
    models = [build_model(name, num_classes=10, in_channels=shape[0]).eval() for _ in range(members)]
    paths = {"loop": TeacherEnsemble(models, batched=False), "batched": TeacherEnsemble(models, batched=True)}
    x = torch.randn(batch, *shape)
    bf16 = precision == "bf16"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times: dict[str, list[float]] = {"loop": [], "batched": []}
    with torch.no_grad(), autocast:
        diff = float((paths["loop"].member_logits(x).float() - paths["batched"].member_logits(x).float())
                     .abs().max())
        for r in range(repeats):
            order = ("loop", "batched") if r % 2 == 0 else ("batched", "loop")
            for key in order:
                times[key].append(time_call(lambda key=key: paths[key].member_logits(x), min_time))
    loop, batched = benchlib.median(times["loop"]), benchlib.median(times["batched"])
    return {"teacher": name, "members": members, "batch": batch, "precision": precision,
            "loop_ms": round(1e3 * loop, 2), "batched_ms": round(1e3 * batched, 2),
            "speedup": round(loop / batched, 2), "max_abs_diff": diff,
            "loop_spread_ms": benchlib.spread([1e3 * t for t in times["loop"]]),
            "batched_spread_ms": benchlib.spread([1e3 * t for t in times["batched"]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = benchlib.machine_info()
    rows = [measure(name, shape, batch, args.members, precision, args.repeats, args.min_time)
            for name, shape, batch in CASES for precision in args.precisions]
    header = ["teacher", "batch", "precision", "loop ms", "batched ms", "loop / batched", "max |diff|"]
    table = benchlib.markdown_table(header, [
        [r["teacher"], r["batch"], r["precision"], f"{r['loop_ms']} ({r['loop_spread_ms']})",
         f"{r['batched_ms']} ({r['batched_spread_ms']})", r["speedup"], f"{r['max_abs_diff']:.1e}"]
        for r in rows])
    print(f"{args.members} teachers, forward under no-grad, median of {args.repeats} repeats "
          f"(min..max in parentheses); machine: {json.dumps(machine)}\n")
    print(table)
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
