"""A snapshot of what training does, to compare before and after a refactor (not a timing benchmark).

    python benchmarks/behaviour_snapshot.py record OUT.json     # on the old tree, then on the new one
    python benchmarks/behaviour_snapshot.py compare OLD.json NEW.json

On scikit-learn's digits (cnn_small teacher trained 40 steps, cnn_tiny students, fp32, log_every 1) it
records, for twelve runs (kd, dkd, at, fitnet, crd, stagewise, dml, ipwd, vid, rkd, kd + EMA, kd + SWA),
every ``metrics.jsonl`` record (each loss term at each step, learning rates, evaluations) without the
timing fields, and the summary's model, steps, validation and test metrics, selection and checkpoint;
and, for kd, crd and kd + EMA, whether 6 steps then a resume to 10 end with the same ``last.pt`` weights,
bit for bit, as 10 steps straight. ``compare`` prints the cases that differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdlab.config.load import validate
from kdlab.run import train

TIMING = ("img_per_s", "peak_mem_mb", "time")
SUMMARY = ("model", "steps", "val_last", "selected", "test_last", "test_selected", "checkpoint",
           "extra_params")
CRD = {"name": "crd", "params": {"num_negatives": 16}}
EMA = {"strategy": "ema", "params": {"decay": 0.9}}
CASES: dict[str, dict[str, Any]] = {
    "kd": {"method": {"name": "kd"}},
    "dkd": {"method": {"name": "dkd"}},
    "at": {"method": {"name": "at"}},
    "fitnet": {"method": {"name": "fitnet"}},
    "crd": {"method": CRD},
    "stagewise": {"method": {"name": "stagewise"}, "train": {"steps": 9, "eval_every": 3}},
    "dml": {"method": {"name": "dml"}},
    "ipwd": {"method": {"name": "ipwd"}},
    "vid": {"method": {"name": "vid"}},
    "rkd": {"method": {"name": "rkd"}},
    "kd_ema": {"method": {"name": "kd"}, "averaging": EMA},
    "kd_swa": {"method": {"name": "kd"}, "train": {"steps": 10, "eval_every": 2},
               "averaging": {"strategy": "swa", "params": {"start_fraction": 0.2, "cycle_steps": 2}}},
}
RESUMED = {"kd": {"method": {"name": "kd"}}, "crd": {"method": CRD},
           "kd_ema": {"method": {"name": "kd"}, "averaging": EMA}}


def tree(out: Path, **sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.2},
        "student": {"name": "cnn_tiny"}, "method": {"name": "ce"},
        "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
        "schedule": {"name": "multistep", "milestones": [2]},
        "train": {"steps": 5, "eval_every": 5, "precision": "fp32", "progress": False, "log_every": 1},
        "out_dir": str(out),
    }
    for key, value in sections.items():
        merge = isinstance(value, dict) and isinstance(base.get(key), dict)
        base[key] = {**base[key], **value} if merge else value
    return base


def records(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def record(path: Path) -> None:
    torch.set_num_threads(2)
    out = Path(tempfile.mkdtemp())
    teacher = train(validate(tree(out, name="teacher", student={"name": "cnn_small"},
                                  train={"steps": 40, "eval_every": 20})))
    teacher_section = {"name": "cnn_small", "checkpoint": str(teacher.run_dir)}
    snapshot: dict[str, Any] = {}
    for name, sections in CASES.items():
        result = train(validate(tree(out, name=name, teacher=teacher_section, **sections)))
        snapshot[name] = {"records": records(result.run_dir),
                          "summary": {k: result.summary.get(k) for k in SUMMARY}}
    for name, sections in RESUMED.items():
        def config(run: str, steps: int, sections: dict[str, Any] = sections) -> Any:
            budget = {"steps": steps, "eval_every": 2}
            return validate(tree(out, name=run, teacher=teacher_section, train=budget, **sections))

        full = train(config(f"full-{name}", 10))
        part = train(config(f"part-{name}", 6))
        train(config(f"part-{name}", 10), resume=part.run_dir)
        a = torch.load(full.run_dir / "last.pt", weights_only=True)["model"]
        b = torch.load(part.run_dir / "last.pt", weights_only=True)["model"]
        exact = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        snapshot[f"resume_{name}"] = {"bit_exact": exact}
    path.write_text(json.dumps(snapshot, indent=1, sort_keys=True))
    print(f"{path}: {len(snapshot)} cases")


def compare(old: Path, new: Path) -> int:
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    differ = [name for name in a if a[name] != b.get(name)]
    for name in differ:
        print(f"differs: {name}")
    print(f"{len(a) - len(differ)} of {len(a)} cases identical")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("record").add_argument("out", type=Path)
    comparing = sub.add_parser("compare")
    comparing.add_argument("old", type=Path)
    comparing.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
