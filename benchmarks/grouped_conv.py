"""The ceiling of a batched ensemble call on this machine: M ordinary convolutions vs the one grouped
convolution that ``vmap`` turns them into.

``torch.func.vmap`` over M stacked copies of a convolution runs one convolution with ``groups=M`` on
the members' inputs stacked along channels. If that grouped kernel is not faster than M separate
ones, no batching of the members can reach a 2x speed-up, because the convolutions are most of a
small CNN's forward. For every convolution of the teachers of ``ensemble_teachers.py``, at the input
shape that teacher gives it, this times the M separate convolutions against the grouped one. Both
paths get the same inputs and weights, in NCHW as in the ensemble benchmark, and run under no-grad
and the chosen precision. The paths are interleaved, the median of the repeats is taken, and the
times are summed over the teacher's convolutions.

Usage: python benchmarks/grouped_conv.py [--members 4 --repeats 5 --threads 1] [--out PATH]
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
import torch.nn.functional as F
from ensemble_teachers import CASES
from torch import nn

from kdlab.models import build_model


def conv_inputs(name: str, shape: tuple[int, ...], batch: int) -> list[tuple[nn.Conv2d, torch.Size]]:
    """Each convolution of teacher ``name`` with the input shape it sees on a batch of ``batch``."""
    model = build_model(name, num_classes=10, in_channels=shape[0]).eval()
    seen: list[tuple[nn.Conv2d, torch.Size]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, args[0].shape)))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(batch, *shape))
    for hook in hooks:
        hook.remove()
    return seen


def seconds(fn: Any, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(5):
            fn()
        out.append((time.perf_counter() - started) / 5)
    return out


def measure(name: str, shape: tuple[int, ...], batch: int, members: int, precision: str,
            repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    loop_s = grouped_s = 0.0
    bf16 = precision == "bf16"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for conv, in_shape in conv_inputs(name, shape, batch):
        x = torch.randn(in_shape)
        weights = [torch.randn_like(conv.weight) for _ in range(members)]
        stacked_x = x.repeat(1, members, 1, 1)
        stacked_w = torch.cat(weights)
        args = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}

        def loop(x=x, weights=weights, args=args, groups=conv.groups):
            return [F.conv2d(x, w, groups=groups, **args) for w in weights]

        def grouped(x=stacked_x, w=stacked_w, args=args, groups=conv.groups):
            return F.conv2d(x, w, groups=groups * members, **args)

        times: dict[str, list[float]] = {"loop": [], "grouped": []}
        with torch.no_grad(), autocast:
            for r in range(repeats):
                for key, fn in ((("loop", loop), ("grouped", grouped)) if r % 2 == 0
                                else (("grouped", grouped), ("loop", loop))):
                    times[key] += seconds(fn, 1)
        loop_s += benchlib.median(times["loop"])
        grouped_s += benchlib.median(times["grouped"])
    return {"teacher": name, "batch": batch, "precision": precision, "members": members,
            "loop_ms": round(1e3 * loop_s, 2), "grouped_ms": round(1e3 * grouped_s, 2),
            "loop_over_grouped": round(loop_s / grouped_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=benchlib.HERE / "results" / "grouped_conv.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = benchlib.machine_info()
    rows = [measure(name, shape, batch, args.members, precision, args.repeats)
            for name, shape, batch in CASES for precision in args.precisions]
    header = ["teacher", "batch", "precision", f"{args.members} convs, ms", "1 grouped conv, ms",
              "loop / grouped"]
    table = benchlib.markdown_table(
        header,
        [[r["teacher"], r["batch"], r["precision"], r["loop_ms"], r["grouped_ms"], r["loop_over_grouped"]]
         for r in rows])
    print(f"machine: {json.dumps(machine)}\n\n{table}")
    fields = {"machine": machine, "rows": rows, "table_markdown": table}
    benchlib.write_result(args.out, "grouped_conv", fields, started)


if __name__ == "__main__":
    main()
