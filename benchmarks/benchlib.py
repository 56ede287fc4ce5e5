"""Shared helpers of the benchmark scripts: machine facts, peak memory, subprocess workers, tables.

Nothing here is part of kdlab; the scripts in this folder import it as a sibling module (``python
benchmarks/<script>.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TD_VENV = REPO / ".venv-torchdistill"
TD_PYTHON = TD_VENV / "bin" / "python"
RESULT_TAG = "BENCH_RESULT "


# ---------------------------------------------------------------- machine and process facts
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict[str, Any]:
    """CPU model, core count, ISA features that matter for bf16, torch/python versions, load average."""
    import torch

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": os.getloadavg(),
    }


def current_rss_mib() -> float:
    """Resident set size of this process now (not its peak), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident set size (``ru_maxrss``) of this process, or of its largest reaped child, in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy_fraction(interval: float = 1.0) -> float:
    """Fraction of the machine's CPU time (all cores) that was busy over ``interval`` seconds."""
    busy0, total0 = _cpu_jiffies()
    time.sleep(interval)
    busy1, total1 = _cpu_jiffies()
    return (busy1 - busy0) / max(total1 - total0, 1)


def wait_for_idle(max_wait: float, threshold: float = 0.15, interval: float = 2.0) -> dict[str, float]:
    """Wait (at most ``max_wait`` s) until other processes use under ``threshold`` of the machine's CPU.

    Other people's jobs on a 2-core machine make timings meaningless; this only waits, it never
    touches them. Returns how long it waited and the last busy fraction seen.
    """
    started = time.perf_counter()
    busy = busy_fraction(interval)
    while busy > threshold and time.perf_counter() - started < max_wait:
        busy = busy_fraction(interval)
    return {"waited_s": round(time.perf_counter() - started, 1), "busy_before": round(busy, 3)}


def mark() -> tuple[float, float]:
    """(wall clock, this process's CPU time), taken at the end of a training step."""
    return time.perf_counter(), time.process_time()


def steady_stats(marks: Sequence[tuple[float, float]], warmup: int, batch_size: int) -> dict[str, Any]:
    """Steady-state throughput from per-step marks: from the end of the last warm-up step to the end.

    ``cpu_share`` is this process's CPU time over that window as a share of all the machine's cores:
    near 1.0 when the run had the machine to itself, well below when other processes took CPU from it.
    """
    measured = len(marks) - warmup
    if warmup < 1 or measured < 1:
        raise ValueError("need at least one warm-up step and one measured step")
    (wall0, cpu0), (wall1, cpu1) = marks[warmup - 1], marks[-1]
    return {
        "img_per_s": batch_size * measured / (wall1 - wall0),
        "cpu_share": round((cpu1 - cpu0) / ((wall1 - wall0) * (os.cpu_count() or 1)), 3),
        "step_s": [round(b[0] - a[0], 4) for a, b in zip(marks, marks[1:], strict=False)],
    }


def emit(result: dict[str, Any]) -> None:
    """Print a worker's result as one tagged JSON line on stdout (the parent parses it)."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_worker(argv: Sequence[str], log_path: Path, timeout: float | None = None) -> dict[str, Any]:
    """Run one worker subprocess, keep its whole output in ``log_path``, return its tagged JSON result.

    The worker imports kdlab from this working tree (``src`` first on ``PYTHONPATH``), also in another
    interpreter such as the torchdistill venv's, whose own kdlab install may point elsewhere."""
    started = time.perf_counter()
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    with log_path.open("w") as log:
        proc = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                              timeout=timeout, cwd=REPO)
        log.write("\n--- stdout ---\n" + proc.stdout)
    results = [line[len(RESULT_TAG):] for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not results:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(
            f"worker {' '.join(argv)} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    result = json.loads(results[-1])
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    return result


def write_result(out: str | Path, benchmark: str, fields: dict[str, Any], started: float) -> None:
    """Write a benchmark's JSON record: its name, the command line that ran it, ``fields`` and the total
    seconds since ``started`` (a ``time.perf_counter()`` value)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": benchmark, "command": " ".join([Path(sys.executable).name, *sys.argv]), **fields,
               "total_s": round(time.perf_counter() - started, 1)}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """``min..max`` of the repeats, for the table."""
    return f"{min(values):.1f}..{max(values):.1f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def python_for_torchdistill(path: str | None) -> Path | None:
    """The interpreter of the torchdistill venv, or None when it is missing."""
    candidate = Path(path) if path else TD_PYTHON
    return candidate if candidate.exists() else None


def this_python() -> str:
    return sys.executable
