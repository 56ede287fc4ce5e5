"""A study's wall time with the teacher's outputs shared through one cache fill vs every student running it.

Two ``kdlab study`` runs of the same grid on a CIFAR-10 slice read from the shared JPEG tar (a
``--train-size`` training subset, 10% of it carved for validation, the full 10k test set): one teacher
(``--teacher``, ``ce``, ``teacher.per_seed: false``) distilled into ``--student`` by KD, DKD and IPWD with
``--seeds`` seeds each, ``--epochs`` epochs, the CIFAR recipe of ``configs/cifar10/_recipe.yaml``
(``precision: auto``). The only difference is ``teacher.share_outputs``: ``true`` adds one
``kdlab cache-teacher`` job after the teacher and the students replay its cache; ``false`` runs the
teacher in every student. Runs go one at a time (``workers: 1``) with ``--threads`` threads.

Reported per variant: the study's wall time, the sum of the students' ``wall_time_s`` (their training
runs), the teacher's and the fill's wall time, and each method's test top-1 (last epoch) over the seeds.
The study directories go to ``--work-dir`` (a temporary folder by default), never into the repository.

Usage: python benchmarks/study_shared_cache.py [--data ../shared/data/cifar10/cifar10-jpeg.tar.gz
       --train-size 4000 --epochs 3 --seeds 3 --teacher resnet20 --student resnet8 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib

METHODS = [{"name": "kd"}, {"name": "dkd"}, {"name": "ipwd"}]


def study_tree(args: argparse.Namespace, name: str, share: bool, out_dir: Path) -> dict[str, Any]:
    return {
        "name": name,
        "out_dir": str(out_dir),
        "base": str(benchlib.REPO / "configs" / "cifar10" / "_recipe.yaml"),
        "overrides": {"data.root": str(Path(args.data).resolve()), "data.subset": args.train_size,
                      "train.epochs": args.epochs, "train.progress": False},
        "pairs": [{"teacher": args.teacher, "student": args.student}],
        "methods": METHODS,
        "baseline": None,
        "seeds": list(range(args.seeds)),
        "teacher": {"per_seed": False, "share_outputs": share},
        "workers": 1,
        "threads_per_worker": args.threads,
    }


def fill_seconds(study_dir: Path) -> float | None:
    """The fill's wall time: from its status's start to the status written when it finished."""
    for path in sorted((study_dir / "status").glob("cache_*.json")):
        return path.stat().st_mtime - json.loads(path.read_text())["started"]
    return None


def run_variant(args: argparse.Namespace, share: bool, out_dir: Path) -> dict[str, Any]:
    from kdlab.protocols.records import read_results
    from kdlab.protocols.study import Study
    from kdlab.protocols.study_schema import StudyConfig

    name = "shared" if share else "live"
    config = StudyConfig.model_validate(study_tree(args, name, share, out_dir))
    started = time.perf_counter()
    outcome = Study(config, benchlib.REPO, echo=lambda line: print(f"  [{name}] {line}", flush=True)).run()
    wall = time.perf_counter() - started
    if not outcome.ok:
        raise SystemExit(f"study {name} failed: {outcome}")
    records = read_results(out_dir / name / "results.jsonl")
    students = [r for r in records if r["role"] == "student"]
    teacher = next(r for r in records if r["role"] == "teacher")
    top1 = {m["name"]: [r["metrics"]["test_last"]["top1"] for r in students if r["method"] == m["name"]]
            for m in METHODS}
    return {
        "study_wall_s": round(wall, 1),
        "students_wall_s": round(sum(r["cost"]["wall_time_s"] for r in students), 1),
        "teacher_wall_s": round(teacher["cost"]["wall_time_s"], 1),
        "fill_wall_s": None if not share else round(fill_seconds(out_dir / name), 1),
        "shared_cache": sorted({r["shared_cache"] for r in students if r["shared_cache"]}),
        "teacher_top1": teacher["metrics"]["test_last"]["top1"],
        "top1": top1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(benchlib.REPO / "../shared/data/cifar10/cifar10-jpeg.tar.gz"))
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "study_shared_cache.json"))
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kdlab-shared-cache-"))
    results = {}
    for share in (True, False):
        results["shared" if share else "live"] = result = run_variant(args, share, work)
        print(json.dumps(result), flush=True)
    shared, live = results["shared"], results["live"]
    print(f"study wall: shared {shared['study_wall_s']} s, live {live['study_wall_s']} s "
          f"({live['study_wall_s'] / shared['study_wall_s']:.2f}x); students: {shared['students_wall_s']} s "
          f"vs {live['students_wall_s']} s ({live['students_wall_s'] / shared['students_wall_s']:.2f}x)")
    for method in shared["top1"]:
        a, b = shared["top1"][method], live["top1"][method]
        print(f"{method}: shared {statistics.mean(a):.2f} +- {statistics.stdev(a):.2f}, "
              f"live {statistics.mean(b):.2f} +- {statistics.stdev(b):.2f} (test top-1, mean +- sd of seeds)")
    payload = {"machine": benchlib.machine_info(), "args": vars(args), "results": results}
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
