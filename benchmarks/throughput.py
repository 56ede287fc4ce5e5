"""KD training throughput: kdlab's Trainer vs a bare PyTorch loop vs torchdistill, on this machine.

A teacher -> student pair (``--teacher``/``--student``, kdlab zoo names; resnet32x4 -> resnet8x4 unless
given; the teacher frozen, eval mode, no-grad), batch 64, synthetic 32x32 images with 100 classes,
SGD(lr 0.05, momentum 0.9, weight decay 5e-4), Hinton KD with T=4 (ce 0.1 + kd 0.9).

Every measurement runs in its own subprocess, so each has a clean peak RSS (``ru_maxrss``) and no
state (allocator caches, oneDNN primitive caches, autotuning) leaks from one variant into another.
Variants are interleaved (kdlab, bare, ..., torchdistill; the next repeat in the opposite order) and the
median over repeats is reported. Throughput is measured over the steady state: from the end of the
last warm-up step to the end of the last step, data loading and all per-step bookkeeping included.

  (a) kdlab: ``kdlab.run.train`` on a synthetic-data config (device-resident data, the Trainer's
      defaults: tqdm bar, per-step finiteness check on CPU, logging every 50 steps), no run directory;
      the teacher on its fast path (``teacher.fast``, the default), and as ``kdlab-eager`` with
      ``teacher.fast: false``.
  (b) bare: a hand-written loop over the very batches kdlab's data source yields (materialized before
      timing), the same models, autocast dtype, channels_last setting and optimizer.
  (c) torchdistill 1.1.5 (its DistillationBox, KDLoss from a YAML config, fp32, a DataLoader over a
      per-sample PIL/torchvision transform pipeline), run in the ``.venv-torchdistill`` interpreter by
      ``benchmarks/td_worker.py`` on the same synthetic images and the same kdlab-zoo models.

Precisions are ``fp32``, ``bf16`` or ``auto`` (kdlab's default: bf16 where the CPU has native bf16 kernels,
else fp32; the bare loop resolves it the same way).

Usage: python benchmarks/throughput.py [--teacher resnet56 --student resnet20] [--steps 12 --warmup 3
       --repeats 3] [--precisions auto] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
import timed_train

TEACHER, STUDENT, NUM_CLASSES, BATCH, TEMPERATURE = "resnet32x4", "resnet8x4", 100, 64, 4.0
#: the implementations on kdlab's side, in run order within a setting
KDLAB_IMPLS = ("kdlab", "kdlab-eager", "bare")
LR, MOMENTUM, WEIGHT_DECAY, W_CE, W_KD = 0.05, 0.9, 5e-4, 0.1, 0.9


# ---------------------------------------------------------------- shared by the kdlab-side workers
def kdlab_tree(args: argparse.Namespace, total_steps: int, teacher_fast: bool = True) -> dict[str, Any]:
    """The kdlab run config of the benchmark (one epoch of ``total_steps`` batches of synthetic data)."""
    tree = timed_train.synthetic_tree(
        student=args.student, teacher=args.teacher, num_classes=NUM_CLASSES, batch_size=BATCH,
        total_steps=total_steps,
        method={"name": "kd", "weights": {"ce": W_CE, "kd": W_KD}, "params": {"temperature": TEMPERATURE}},
        optim={"name": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        precision=args.precision, channels_last=args.channels_last, seed=args.seed)
    if not teacher_fast:
        tree["teacher"]["fast"] = False
    return tree


def build_pair(args: argparse.Namespace):
    """Teacher and student with the same initial weights in every worker."""
    import torch

    from kdlab.models import build_model

    torch.manual_seed(args.seed)
    teacher = build_model(args.teacher, NUM_CLASSES)
    student = build_model(args.student, NUM_CLASSES)
    return teacher, student


def worker_kdlab(args: argparse.Namespace, teacher_fast: bool) -> dict[str, Any]:
    baseline = benchlib.current_rss_mib()
    total = args.warmup + args.steps
    teacher, student = build_pair(args)
    run = timed_train.timed_train(kdlab_tree(args, total, teacher_fast), student=student, teacher=teacher)
    return {
        **benchlib.steady_stats(run.marks, args.warmup, BATCH),
        "precision": run.summary["precision"],
        "baseline_rss_mib": baseline,
        "peak_rss_mib": benchlib.peak_rss_mib(),
    }


def worker_bare(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from kdlab.assembly import build_run_data
    from kdlab.config import validate
    from kdlab.core.runtime import Runtime
    from kdlab.engine.precision import resolve_precision

    baseline = benchlib.current_rss_mib()
    total = args.warmup + args.steps
    config = validate(kdlab_tree(args, total), "benchmark")
    data = build_run_data(config, Runtime(seed=config.train.seed))
    data.train.set_epoch(0)
    batches = [(b.inputs, b.targets) for b in itertools.islice(data.train, total)]
    teacher, student = build_pair(args)
    teacher.eval().requires_grad_(False)
    student.train()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    teacher.to(memory_format=fmt)
    student.to(memory_format=fmt)
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    dtype = precision.dtype

    marks = []
    for inputs, targets in batches:
        x = inputs.contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
            with torch.no_grad():
                teacher_logits = teacher(x)
            logits = student(x)
            log_p_s = F.log_softmax(logits.float() / TEMPERATURE, dim=1)
            log_p_t = F.log_softmax(teacher_logits.float() / TEMPERATURE, dim=1)
            kd = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean() * TEMPERATURE**2
            loss = W_CE * F.cross_entropy(logits.float(), targets) + W_KD * kd
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        marks.append(benchlib.mark())
    return {
        **benchlib.steady_stats(marks, args.warmup, BATCH),
        "precision": precision.name,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": benchlib.peak_rss_mib(),
    }


# ---------------------------------------------------------------- the parent: schedule, aggregate, report
def variant_key(impl: str, precision: str, channels_last: bool) -> str:
    return f"{impl}/{precision}/{'cl' if channels_last else 'nchw'}"


def worker_argv(args: argparse.Namespace, impl: str, precision: str, channels_last: bool,
                td_python: Path | None) -> list[str]:
    common = ["--warmup", str(args.warmup), "--steps", str(args.steps), "--seed", str(args.seed),
              "--threads", str(args.threads), "--teacher", args.teacher, "--student", args.student]
    if impl == "torchdistill":
        return [str(td_python), str(benchlib.HERE / "td_worker.py"), "throughput", *common,
                "--workers", str(args.td_workers)]
    argv = [benchlib.this_python(), str(Path(__file__).resolve()), "--worker", impl,
            "--precision", precision, *common]
    return argv + (["--channels-last"] if channels_last else [])


def schedule(args: argparse.Namespace, td: bool) -> list[list[tuple[str, str, bool]]]:
    """Per repeat, the variants in run order: kdlab's side per setting, then torchdistill; odd repeats
    reversed."""
    settings = [(p, cl) for p in args.precisions for cl in args.channels_last_modes]
    base: list[tuple[str, str, bool]] = []
    for precision, cl in settings:
        base += [(impl, precision, cl) for impl in args.impls]
    if td:
        base.append(("torchdistill", "fp32", False))
    return [base if r % 2 == 0 else base[::-1] for r in range(args.repeats)]


def summarize(runs: dict[str, list[dict[str, Any]]], cores: int) -> dict[str, dict[str, Any]]:
    """Medians over repeats of wall-clock img/s and of images per CPU-second of the training process.

    Images per CPU-second (img/s divided by the run's CPU share of the machine's ``cores``) is what a
    run would reach with its CPU time undisturbed; it stays meaningful when other jobs load the machine,
    wall-clock img/s does not. (For torchdistill it leaves out the DataLoader workers' CPU time.)
    """
    out = {}
    for key, results in runs.items():
        rates = [r["img_per_s"] for r in results]
        per_cpu = [r["img_per_s"] / max(r["cpu_share"] * cores, 1e-9) for r in results]
        out[key] = {
            "img_per_s_median": round(benchlib.median(rates), 2),
            "img_per_s_all": [round(v, 2) for v in rates],
            "img_per_cpu_s_median": round(benchlib.median(per_cpu), 2),
            "img_per_cpu_s_all": [round(v, 2) for v in per_cpu],
            "cpu_share_min": min(r["cpu_share"] for r in results),
            "cpu_share_median": round(benchlib.median([r["cpu_share"] for r in results]), 3),
            "peak_rss_mib_median": round(benchlib.median([r["peak_rss_mib"] for r in results]), 1),
            "peak_rss_delta_mib_median": round(
                benchlib.median([r["peak_rss_mib"] - r["baseline_rss_mib"] for r in results]), 1),
        }
        if "worker_peak_rss_mib" in results[0]:
            out[key]["worker_peak_rss_mib_max"] = max(r["worker_peak_rss_mib"] for r in results)
    return out


def _cell(stats: dict[str, Any], metric: str) -> str:
    values = stats[f"{metric}_all"]
    return f"{stats[f'{metric}_median']:.1f} ({benchlib.spread(values)})"


IMPL_LABELS = {"kdlab": "kdlab (teacher.fast on, the default)", "kdlab-eager": "kdlab, teacher.fast: false",
               "bare": "bare loop"}


def setting_label(precision: str, resolved: dict[str, str], cl: bool) -> str:
    """``auto = fp32, channels_last``: the requested precision (what it resolved to) and memory format."""
    shown = f"auto = {resolved.get(precision, '?')}" if precision == "auto" else precision
    return f"{shown}, {'channels_last' if cl else 'NCHW'}"


def _rss(s: dict[str, Any]) -> str:
    return f"{s['peak_rss_mib_median']:.0f} (+{s['peak_rss_delta_mib_median']:.0f})"


def report(settings: dict[str, Any], stats: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(a) every kdlab-side variant against the bare loop of its setting, with the fast path's gain;
    (c) every variant against torchdistill's defaults."""
    lines, ratios, rows = [], {}, []
    resolved = settings.get("resolved_precision", {})
    labels = {**IMPL_LABELS, **settings.get("impl_labels", {})}
    for precision in settings["precisions"]:
        for cl in settings["channels_last_modes"]:
            tag = f"{precision} {'cl' if cl else 'nchw'}"
            label = setting_label(precision, resolved, cl)
            bare = stats.get(variant_key("bare", precision, cl))
            for impl in KDLAB_IMPLS:
                s = stats.get(variant_key(impl, precision, cl))
                if s is None:
                    continue
                wall = cpu = None
                if bare is not None and impl != "bare":
                    wall = s["img_per_s_median"] / bare["img_per_s_median"]
                    cpu = s["img_per_cpu_s_median"] / bare["img_per_cpu_s_median"]
                    ratios[f"{impl}/bare {tag}"] = {"wall": round(wall, 3), "per_cpu_second": round(cpu, 3)}
                rows.append([label, labels[impl], _cell(s, "img_per_s"), _cell(s, "img_per_cpu_s"),
                             "1 (reference)" if impl == "bare" else "n/a" if wall is None else f"{wall:.3f}",
                             "1 (reference)" if impl == "bare" else "n/a" if cpu is None else f"{cpu:.3f}",
                             f"{s['cpu_share_min']:.2f}", _rss(s)])
            fast, eager = (stats.get(variant_key(i, precision, cl)) for i in ("kdlab", "kdlab-eager"))
            if fast is not None and eager is not None:
                ratios[f"kdlab fast/eager teacher {tag}"] = {
                    "wall": round(fast["img_per_s_median"] / eager["img_per_s_median"], 3),
                    "per_cpu_second": round(fast["img_per_cpu_s_median"] / eager["img_per_cpu_s_median"], 3)}
    lines.append("### (a) kdlab Trainer vs (b) bare PyTorch loop, equal settings\n")
    lines.append(benchlib.markdown_table(
        ["setting", "implementation", "img/s", "img/CPU-s", "x bare (wall)", "x bare (CPU)", "min CPU share",
         "peak RSS MiB (+over imports)"], rows))
    gains = [(k, v) for k, v in ratios.items() if k.startswith("kdlab fast/eager")]
    for key, value in gains:
        lines.append(f"\n{key}: {value['wall']:.3f} (wall), {value['per_cpu_second']:.3f} (per CPU-second)")

    td = variant_key("torchdistill", "fp32", False)
    if td in stats:
        t = stats[td]
        rows = [[f"torchdistill 1.1.5 defaults (fp32, NCHW, DataLoader num_workers={settings['td_workers']})",
                 _cell(t, "img_per_s"), "1.00", _cell(t, "img_per_cpu_s"), "1.00",
                 f"{t['cpu_share_min']:.2f}", _rss(t)]]
        for precision in settings["precisions"]:
            for cl in settings["channels_last_modes"]:
                for impl in KDLAB_IMPLS:
                    key = variant_key(impl, precision, cl)
                    if key not in stats:
                        continue
                    s = stats[key]
                    wall = s["img_per_s_median"] / t["img_per_s_median"]
                    cpu = s["img_per_cpu_s_median"] / t["img_per_cpu_s_median"]
                    ratios[f"{impl} {precision} {'cl' if cl else 'nchw'} / torchdistill"] = {
                        "wall": round(wall, 3), "per_cpu_second": round(cpu, 3)}
                    is_default = impl == "kdlab" and precision == "auto" and cl
                    default = " **(kdlab's defaults)**" if is_default else ""
                    label = f"{labels[impl]}, {setting_label(precision, resolved, cl)}{default}"
                    rows.append([label, _cell(s, "img_per_s"), f"{wall:.2f}", _cell(s, "img_per_cpu_s"),
                                 f"{cpu:.2f}", f"{s['cpu_share_min']:.2f}", _rss(s)])
        lines.append("\n### (c) kdlab vs torchdistill\n")
        lines.append(benchlib.markdown_table(
            ["run", "img/s", "x torchdistill (wall)", "img/CPU-s", "x torchdistill (CPU)", "min CPU share",
             "peak RSS MiB (+over imports)"], rows))
        if "worker_peak_rss_mib_max" in t:
            lines.append(f"\ntorchdistill DataLoader workers: largest worker peak RSS "
                         f"{t['worker_peak_rss_mib_max']:.0f} MiB (not included above).")
    return "\n".join(lines), ratios


def main_parent(args: argparse.Namespace) -> None:
    td_python = None if args.skip_torchdistill else benchlib.python_for_torchdistill(args.td_python)
    if not args.skip_torchdistill and td_python is None:
        print(f"note: no torchdistill venv at {benchlib.TD_VENV}; skipping (c). See BENCHMARKS.md.",
              file=sys.stderr)
    machine = benchlib.machine_info()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    plan = schedule(args, td_python is not None)
    runs: dict[str, list[dict[str, Any]]] = {}
    started = time.perf_counter()
    count = sum(len(r) for r in plan)
    done = 0
    for repeat, order in enumerate(plan):
        for impl, precision, cl in order:
            key = variant_key(impl, precision, cl)
            log = log_dir / f"{key.replace('/', '_')}_r{repeat}.log"
            idle = benchlib.wait_for_idle(args.idle_wait, args.idle_threshold)
            result = benchlib.run_worker(worker_argv(args, impl, precision, cl, td_python), log)
            result.update(idle)
            runs.setdefault(key, []).append(result)
            done += 1
            print(f"[{done}/{count} {time.perf_counter() - started:6.0f}s] repeat {repeat} {key:24s} "
                  f"{result['img_per_s']:7.1f} img/s  peak RSS {result['peak_rss_mib']:.0f} MiB  "
                  f"CPU share {result['cpu_share']:.2f}  (waited {idle['waited_s']:.0f} s for idle, "
                  f"busy {idle['busy_before']:.2f})", flush=True)
    resolved = {p: next(r["precision"] for key, rs in runs.items() for r in rs if key.split("/")[1] == p
                        and not key.startswith("torchdistill")) for p in args.precisions}
    settings = {
        "teacher": args.teacher, "student": args.student, "num_classes": NUM_CLASSES, "batch_size": BATCH,
        "temperature": TEMPERATURE, "weights": {"ce": W_CE, "kd": W_KD},
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats, "td_workers": args.td_workers,
        "threads": args.threads or machine["torch_threads"], "precisions": args.precisions,
        "channels_last_modes": args.channels_last_modes, "impls": args.impls, "resolved_precision": resolved,
    }
    stats = summarize(runs, machine["cores"])
    table, ratios = report(settings, stats)
    machine["loadavg_at_end"] = os.getloadavg()
    header = (f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
              f"({args.threads or machine['torch_threads']} threads per run), "
              f"AMX-BF16 {machine['amx_bf16']}, AVX512-BF16 {machine['avx512_bf16']}; "
              f"load average at start {machine['loadavg_at_start'][0]:.2f}, "
              f"at end {machine['loadavg_at_end'][0]:.2f}\n"
              f"{args.teacher} -> {args.student}, batch {BATCH}, synthetic 32x32 x {NUM_CLASSES} classes, "
              f"{args.warmup} warm-up + {args.steps} timed steps per run, "
              f"{args.repeats} interleaved repeats, medians; total {time.perf_counter() - started:.0f} s\n")
    print("\n" + header + "\n" + table)
    benchlib.write_result(args.out, "kd_throughput", {
        "machine": machine,
        "settings": settings,
        "summary": stats,
        "ratios": ratios,
        "runs": runs,
        "table_markdown": table,
    }, started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every variant")
    parser.add_argument("--teacher", default=TEACHER, help="kdlab zoo name of the teacher")
    parser.add_argument("--student", default=STUDENT, help="kdlab zoo name of the student")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32,bf16,auto")
    parser.add_argument("--impls", default=",".join(KDLAB_IMPLS),
                        help=f"comma-separated, kdlab's side: {','.join(KDLAB_IMPLS)}")
    parser.add_argument("--channels-last-modes", default="off,on", help="comma-separated: off,on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads in every run (0: torch's default, one per core)")
    parser.add_argument("--skip-torchdistill", action="store_true")
    parser.add_argument("--td-python", default=None, help=f"default: {benchlib.TD_PYTHON}")
    parser.add_argument("--td-workers", type=int, default=2, help="torchdistill DataLoader num_workers")
    parser.add_argument("--idle-wait", type=float, default=90,
                        help="before each run, wait up to this many seconds for other processes to go quiet")
    parser.add_argument("--idle-threshold", type=float, default=0.15,
                        help="'quiet': other processes use less than this share of the machine's CPU")
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "throughput.json"))
    parser.add_argument("--log-dir", default="/tmp/kdlab-bench-throughput", help="per-run worker logs")
    parser.add_argument("--report-only", metavar="JSON", help="re-render the tables of a finished run")
    # internal: one measurement in this process
    parser.add_argument("--worker", choices=KDLAB_IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.impls = [i for i in args.impls.split(",") if i]
    unknown = sorted({*args.precisions} - {"fp32", "bf16", "auto"}) + sorted({*args.impls} - {*KDLAB_IMPLS})
    if unknown:
        parser.error(f"--precisions/--impls: unknown {', '.join(unknown)}; expected fp32, bf16, auto and "
                     f"{', '.join(KDLAB_IMPLS)}")
    modes = {"off": False, "on": True}
    args.channels_last_modes = [modes[m] for m in args.channels_last_modes.split(",") if m]
    return args


def report_only(path: Path) -> None:
    """Re-render the tables of a finished run's JSON (e.g. after changing the report), and rewrite it."""
    payload = json.loads(path.read_text())
    settings = payload["settings"]
    settings.setdefault("precisions", sorted({k.split("/")[1] for k in payload["runs"] if "torch" not in k}))
    settings.setdefault("channels_last_modes", [False, True])
    settings.setdefault("td_workers", 2)
    if "impls" not in settings:  # a run from before the teacher fast path existed
        settings.update(impls=["kdlab", "bare"], impl_labels={"kdlab": "kdlab"})
    payload["summary"] = summarize(payload["runs"], payload["machine"]["cores"])
    payload["table_markdown"], payload["ratios"] = report(settings, payload["summary"])
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(payload["table_markdown"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report_only:
        report_only(Path(args.report_only))
        return
    if args.worker is not None and args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker in ("kdlab", "kdlab-eager"):
        benchlib.emit(worker_kdlab(args, teacher_fast=args.worker == "kdlab"))
    elif args.worker == "bare":
        benchlib.emit(worker_bare(args))
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
