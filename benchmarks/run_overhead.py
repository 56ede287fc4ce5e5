"""Per-run overhead of a study's runs: warm workers (forked from a fork server with kdlab imported) vs a
fresh Python process per run.

The same tiny study (digits, ``cnn_tiny``, CE, ``--runs`` seeds of ``--steps`` steps, one run at a time
with ``--threads`` threads) runs with ``executor.warm`` true and false, alternating, ``--rounds`` times
each. Per run, from its status file and ``summary.json``: the time from the runner starting it to the
runner seeing it done, the run's own ``wall_time_s`` (config to summary, inside the process) and its
``train_time_s``. The overhead is elapsed minus ``wall_time_s``: interpreter start, imports and the
command line, what warm workers remove. (Data decoding and test evaluation are inside ``wall_time_s``.)
Printed as JSON; ``--out`` also writes it.

Usage: python benchmarks/run_overhead.py [--runs 4 --steps 20 --rounds 3 --threads 1 --out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kdlab.protocols.records import read_status, read_summary
from kdlab.protocols.study import Study
from kdlab.protocols.study_schema import StudyConfig


def study_config(out_dir: Path, warm: bool, runs: int, steps: int, threads: int) -> StudyConfig:
    return StudyConfig.model_validate({
        "name": "warm" if warm else "cold", "out_dir": str(out_dir),
        "base": {"data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
                 "student": {"name": "cnn_tiny"},
                 "train": {"steps": steps, "eval_every": steps, "precision": "fp32", "progress": False}},
        "pairs": [{"teacher": "cnn_tiny", "student": "cnn_tiny"}], "methods": [{"name": "ce"}],
        "seeds": list(range(runs)), "workers": 1, "threads_per_worker": threads,
        "executor": {"warm": warm}})


def one_study(out_dir: Path, warm: bool, runs: int, steps: int, threads: int) -> dict[str, Any]:
    config = study_config(out_dir, warm, runs, steps, threads)
    study = Study(config, out_dir, echo=lambda _: None, poll_interval=0.05)
    started = time.perf_counter()
    assert study.run().ok
    wall = time.perf_counter() - started
    rows = []
    for job in study.jobs:
        status, summary = read_status(study.dir, job.id), read_summary(study.run_dir(job)) or {}
        elapsed = status["updated"] - status["started"]
        rows.append({"elapsed_s": elapsed, "wall_time_s": summary["wall_time_s"],
                     "train_time_s": summary["train_time_s"], "overhead_s": elapsed - summary["wall_time_s"]})
    return {"warm": warm, "study_s": wall, "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            for warm in (True, False):
                out = Path(tmp) / f"round{index}"
                results.append(one_study(out, warm, args.runs, args.steps, args.threads))
    summary = {}
    for warm in (True, False):
        rows = [row for r in results if r["warm"] == warm for row in r["runs"]]
        summary["warm" if warm else "cold"] = {
            key: round(statistics.median(row[key] for row in rows), 3)
            for key in ("elapsed_s", "wall_time_s", "train_time_s", "overhead_s")} | {
            "study_s_per_round": [round(r["study_s"], 1) for r in results if r["warm"] == warm]}
    ratio = summary["cold"]["overhead_s"] / summary["warm"]["overhead_s"]
    summary["overhead_ratio_cold_over_warm"] = round(ratio, 1)
    text = json.dumps({"args": vars(args) | {"out": str(args.out)}, "median_per_run": summary}, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
