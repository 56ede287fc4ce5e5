"""Where the time of one kdlab KD step goes: ``torch.profiler`` over steady-state Trainer steps.

The run is the kdlab side of ``benchmarks/throughput.py`` (the same config, pair and initial weights:
``kdlab.run.train`` on synthetic 32x32 data, batch 64, Hinton KD), with kdlab's defaults unless told
otherwise. After ``--warmup`` steps, ``--steps`` steps are profiled (CPU activities, no shapes or
stacks). The benchmark labels the step's parts with ``record_function`` ranges from outside kdlab: the
data iterator's ``next`` (``data``), the Trainer's ``_train_step``, inside it the distiller's forward,
and inside that the teacher's and the student's forwards (module hooks); ``_check_finite`` is labelled
too. Every outermost operator call (an aten op called from Python, an autograd node in the backward,
``Optimizer.step``/``zero_grad``) is charged with its whole CPU time to

  - an operator kind: conv forward, conv backward, batchnorm (forward and backward), elementwise
    (activations, adds, pads, copies and their backward nodes), linear/pooling, loss (softmax, KL, CE),
    optimizer (``Optimizer.step``/``zero_grad``, gradient accumulation), data, other;
  - a phase: data, teacher forward, student forward, loss (distiller forward outside both models),
    backward, optimizer, finiteness check, rest of the step.

Wall time between step ends that no operator covers (Python, hooks, dispatch between ops, the Trainer's
bookkeeping) is reported as ``untracked``. All figures are per step (totals over the profiled steps
divided by their number).

Usage: python benchmarks/kd_step_profile.py [--teacher resnet56 --student resnet20] [--steps 5]
       [--no-teacher-fast] [--threads 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from typing import Any

import benchlib
import throughput

PHASE_RANGES = {"kd/data": "data", "kd/teacher_forward": "teacher forward",
                "kd/student_forward": "student forward", "kd/distiller_forward": "loss",
                "kd/check_finite": "finiteness check", "kd/train_step": "rest of the step"}
KINDS = ("conv forward", "conv backward", "batchnorm", "elementwise", "linear/pooling", "loss", "optimizer",
         "data", "other")
ELEMENTWISE = ("relu", "threshold", "add", "mul", "div", "sub", "pad", "constant_pad", "copy", "clone",
               "contiguous", "to", "cat", "slice", "select", "view", "reshape", "flatten", "empty", "zero",
               "fill", "clamp", "neg", "where", "expand", "hardtanh")
BACKWARD_ELEMENTWISE = ("relu", "threshold", "add", "mul", "div", "sub", "constantpad", "slice", "view",
                        "reshape", "clone", "copy", "cat", "select", "unsafe", "neg")
LOSS = ("softmax", "log_softmax", "cross_entropy", "nll", "kl_div", "exp", "sum", "mean", "pow", "log")


def operator_kind(name: str, phase: str) -> str:
    """The kind of an outermost operator call, from its name (``aten::conv2d``, ``autograd::engine::
    evaluate_function: ConvolutionBackward0``, ``Optimizer.step#SGD.step``, ...)."""
    if phase == "data":
        return "data"
    if name.startswith("Optimizer.") or "AccumulateGrad" in name or name.startswith("aten::_foreach"):
        return "optimizer"
    op = name.rsplit(": ", 1)[-1].removeprefix("aten::").lower()
    if "convolutionbackward" in op:
        return "conv backward"
    if "conv" in op:
        return "conv forward"
    if "batch_norm" in op or "batchnorm" in op:
        return "batchnorm"
    if any(k in op for k in ("linear", "addmm", "mm", "tbackward", "pool", "adaptive", "meanbackward")):
        return "linear/pooling"
    if any(op.startswith(k) for k in LOSS) or any(k in op for k in ("softmax", "nllloss", "kl", "xlogy")):
        return "loss"
    if any(op.startswith(k) for k in ELEMENTWISE) or op.endswith("backward0") and any(
            op.startswith(k) for k in BACKWARD_ELEMENTWISE):
        return "elementwise"
    return "other"


class Labels:
    """record_function ranges opened and closed from module hooks (and method wrappers)."""

    def __init__(self) -> None:
        self.open: dict[str, list[Any]] = defaultdict(list)

    def enter(self, name: str) -> None:
        import torch

        rf = torch.autograd.profiler.record_function(name)
        rf.__enter__()
        self.open[name].append(rf)

    def exit(self, name: str) -> None:
        self.open[name].pop().__exit__(None, None, None)

    def around_module(self, module, name: str) -> None:
        module.register_forward_pre_hook(lambda *_: self.enter(name))
        module.register_forward_hook(lambda *_: self.exit(name))

    def around_call(self, fn, name: str):
        def labelled(*args, **kwargs):
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit(name)
        return labelled


class LabelledData:
    """The Trainer's data source, each ``next`` inside a ``data`` range."""

    def __init__(self, source, labels: Labels) -> None:
        self.source, self.labels = source, labels

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def __iter__(self):
        iterator = iter(self.source)
        while True:
            self.labels.enter("kd/data")
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.labels.exit("kd/data")
            yield batch


def charge(events) -> tuple[dict[str, float], dict[str, float], dict[str, float], float]:
    """Per kind, per phase and per operator name: the CPU time (us) of the outermost operator calls;
    and the CPU time of the outermost events (ranges included), to compare with the wall time."""
    kinds: dict[str, float] = defaultdict(float)
    phases: dict[str, float] = defaultdict(float)
    names: dict[str, float] = defaultdict(float)
    covered = 0.0
    for event in events:
        if event.cpu_parent is None:
            covered += event.cpu_time_total
        if event.name in PHASE_RANGES or event.name.startswith("ProfilerStep"):
            continue
        parent = event.cpu_parent
        if parent is not None and parent.name not in PHASE_RANGES:
            continue
        phase = PHASE_RANGES[parent.name] if parent is not None else "outside the step"
        if phase == "rest of the step":
            if event.name.startswith("autograd::engine"):
                phase = "backward"
            elif event.name.startswith("Optimizer.") or "AccumulateGrad" in event.name:
                phase = "optimizer"
        kind = operator_kind(event.name, phase)
        kinds[kind] += event.cpu_time_total
        phases[phase] += event.cpu_time_total
        names[f"{kind}: {event.name}"] += event.cpu_time_total
    return kinds, phases, names, covered


def profile_run(args: argparse.Namespace) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from kdlab.config import validate
    from kdlab.engine import Callback
    from kdlab.run import train

    labels = Labels()
    state: dict[str, Any] = {"marks": []}

    class Profiled(Callback):
        name = "step_profile"

        def on_fit_start(self, trainer) -> None:
            trainer.train_data = LabelledData(trainer.train_data, labels)
            trainer._train_step = labels.around_call(trainer._train_step, "kd/train_step")
            trainer._check_finite = labels.around_call(trainer._check_finite, "kd/check_finite")
            labels.around_module(trainer.distiller, "kd/distiller_forward")
            labels.around_module(trainer.distiller.student, "kd/student_forward")
            labels.around_module(trainer.distiller.frozen.module, "kd/teacher_forward")
            state["notes"] = trainer.teacher_notes
            state["precision"] = trainer.precision.name

        def on_step_end(self, trainer) -> None:
            state["marks"].append(benchlib.mark())
            if trainer.step == args.warmup:
                state["profiler"] = profile(activities=[ProfilerActivity.CPU])
                state["profiler"].__enter__()
            elif trainer.step == args.warmup + args.steps:
                state["profiler"].__exit__(None, None, None)

    ns = argparse.Namespace(teacher=args.teacher, student=args.student, precision=args.precision,
                            channels_last=True, seed=args.seed)
    total = args.warmup + args.steps
    teacher, student = throughput.build_pair(ns)
    tree = throughput.kdlab_tree(ns, total, teacher_fast=args.teacher_fast)
    train(validate(tree, "benchmark"), callbacks=[Profiled()], write=False, student=student, teacher=teacher)
    marks = state["marks"]
    (wall0, cpu0), (wall1, cpu1) = marks[args.warmup - 1], marks[-1]
    kinds, phases, names, covered = charge(state["profiler"].events())
    steps = args.steps
    wall_ms, cpu_ms = (wall1 - wall0) * 1e3 / steps, (cpu1 - cpu0) * 1e3 / steps
    per_step = {k: round(v / 1e3 / steps, 2) for k, v in kinds.items()}
    per_step["untracked"] = round(wall_ms - covered / 1e3 / steps, 2)
    return {
        "precision": state["precision"],
        "teacher_notes": state["notes"],
        "step_wall_ms": round(wall_ms, 2),
        "step_cpu_ms": round(cpu_ms, 2),
        "cpu_share": round((cpu1 - cpu0) / ((wall1 - wall0) * (os.cpu_count() or 1)), 3),
        "by_kind_ms": per_step,
        "by_phase_ms": {k: round(v / 1e3 / steps, 2) for k, v in phases.items()},
        "top_ops_ms": {k: round(v / 1e3 / steps, 2)
                       for k, v in sorted(names.items(), key=lambda kv: -kv[1])[:args.top]},
    }


def render(result: dict[str, Any]) -> str:
    """Per kind and per phase: wall ms per step, share of the step, and that share of the step's CPU
    time (what the part costs undisturbed, when other jobs took the core part of the time)."""
    wall, cpu = result["step_wall_ms"], result["step_cpu_ms"]
    header = ["ms per step (wall)", "% of step", "share x step CPU ms"]
    kinds = result["by_kind_ms"]
    order = [k for k in (*KINDS, "untracked") if k in kinds]
    rows = [[k, f"{kinds[k]:.1f}", f"{100 * kinds[k] / wall:.1f}", f"{cpu * kinds[k] / wall:.1f}"]
            for k in order]
    lines = [benchlib.markdown_table(["operator kind", *header], rows)]
    ranked = sorted(result["by_phase_ms"].items(), key=lambda kv: -kv[1])
    rows = [[k, f"{v:.1f}", f"{100 * v / wall:.1f}", f"{cpu * v / wall:.1f}"] for k, v in ranked]
    lines += ["", benchlib.markdown_table(["phase", *header], rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--no-teacher-fast", dest="teacher_fast", action="store_false",
                        help="teacher.fast: false (default: the fast path, kdlab's default)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=15, help="operators listed by CPU time")
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "kd_step_profile.json"))
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps: at least 1 each")
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = benchlib.machine_info()
    result = profile_run(args)
    machine["loadavg_at_end"] = os.getloadavg()
    table = render(result)
    print(f"step: {result['step_wall_ms']:.1f} ms wall, {result['step_cpu_ms']:.1f} ms CPU "
          f"(CPU share {result['cpu_share']:.2f}); precision {result['precision']}\n\n{table}\n")
    for name, ms in result["top_ops_ms"].items():
        print(f"{ms:9.2f} ms  {name}")
    benchlib.write_result(args.out, "kd_step_profile", {
        "machine": machine,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        **result, "table_markdown": table}, started)


if __name__ == "__main__":
    main()
