"""Which way IPWD's weight ratio should point, decided on a constructed imbalanced teacher.

IPWD's only textual source gives ``w = 1 + H_cls / H_kd``; the stated intent (compensate the samples
the teacher's "machine domain" under-represents) suggests ``w = 1 + H_kd / H_cls``. Here the imbalance
is built in, so the answer is known: on scikit-learn digits (10 classes),

  1. a teacher (cnn_small) is trained with cross-entropy on the balanced training split;
  2. its logits are shifted by ``log pi_c`` with a long-tailed prior ``pi_c = rho ** (-rank_c / 9)``
     over a random class order (rho = ``--rho``): the posterior of the same teacher had it been trained
     under that class prior (Bayes' rule; the logit-adjustment view of long-tailed training, Menon et
     al., ICLR 2021). Its summed predicted probability is then long-tailed over the classes, so the
     tail classes' samples are the ones its soft labels under-represent;
  3. a student (cnn_tiny) is distilled from it with ``ipwd`` under each orientation, and with plain
     ``kd``; ``rho = 1`` (the unshifted teacher) is the control.

Reported per orientation, mean over seeds: the mean weight of the samples of the head and tail class
groups (the 3 classes with the largest / smallest summed teacher probability: the distiller's own
diagnostics, averaged over the run's evaluations), the share of seeds whose tail mean exceeds the head
mean, and the test accuracy on the constructed head / tail classes. The orientation that gives the tail
the larger weights is the one that does what IPWD intends.

Usage: python benchmarks/ipwd_orientation.py [--seeds 0 1 2] [--epochs 20] [--rho 1 20 100] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.config import validate
from kdlab.core.runtime import Runtime
from kdlab.engine.logger import read_metrics
from kdlab.run import train

CLASSES, GROUP = 10, 3


class PriorShiftedTeacher(nn.Module):
    """``teacher(x) + log_prior``: the teacher's posterior under a different class prior."""

    def __init__(self, teacher: nn.Module, log_prior: Tensor) -> None:
        super().__init__()
        self.teacher = teacher
        self.register_buffer("log_prior", log_prior)

    def forward(self, x: Tensor) -> Tensor:
        return self.teacher(x) + self.log_prior


def tree(args: argparse.Namespace, run_dir: str, name: str, model: str, method: dict[str, Any],
         seed: int) -> dict[str, Any]:
    return {
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.2},
        "student": {"name": model},
        "method": method,
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": args.epochs, "precision": "fp32", "progress": False, "seed": seed},
        "out_dir": run_dir,
        "name": name,
    }


@torch.no_grad()
def group_accuracy(model: nn.Module, head: list[int], tail: list[int], seed: int) -> tuple[float, float]:
    """Test accuracy of ``model`` on the samples of the head and of the tail classes."""
    from kdlab.data import build_data

    data = build_data({"name": "digits", "batch_size": 256, "val_fraction": 0.2},
                       Runtime(device=torch.device("cpu"), seed=seed))
    model.eval()
    hits = torch.zeros(CLASSES)
    counts = torch.zeros(CLASSES)
    for batch in data.test:
        correct = (model(batch.inputs).argmax(1) == batch.targets).float()
        hits.index_add_(0, batch.targets, correct)
        counts.index_add_(0, batch.targets, torch.ones_like(correct))
    return (100 * float(hits[head].sum() / counts[head].sum()),
            100 * float(hits[tail].sum() / counts[tail].sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rho", type=float, nargs="+", default=[1.0, 20.0, 100.0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="ipwd-orientation-")
    methods = {
        "kd": {"name": "kd"},
        "ipwd kd_over_cls": {"name": "ipwd", "params": {"orientation": "kd_over_cls", "group_fraction": 0.3}},
        "ipwd cls_over_kd": {"name": "ipwd", "params": {"orientation": "cls_over_kd", "group_fraction": 0.3}},
    }
    rows = []
    for rho in args.rho:
        results: dict[str, list[dict[str, float]]] = {label: [] for label in methods}
        for seed in args.seeds:
            teacher = train(validate(tree(args, work, f"t{seed}", "cnn_small", {"name": "ce"}, seed)),
                            write=False).student
            order = torch.randperm(CLASSES, generator=torch.Generator().manual_seed(seed))
            log_prior = torch.empty(CLASSES)
            log_prior[order] = -torch.arange(CLASSES, dtype=torch.float32) / (CLASSES - 1) * math.log(rho)
            shifted = PriorShiftedTeacher(teacher, log_prior)
            head, tail = order[:GROUP].tolist(), order[-GROUP:].tolist()
            for label, method in methods.items():
                name = f"{label.replace(' ', '-')}-rho{rho:g}-s{seed}"
                result = train(validate(tree(args, work, name, "cnn_tiny", method, seed)), teacher=shifted)
                record = {}
                records = [r for r in read_metrics(result.run_dir) if r["kind"] == "method"]
                if records:
                    record = {k: statistics.mean(r[k] for r in records) for k in ("ipw_mean", "ipw_head",
                                                                                  "ipw_tail")}
                    record["tail_gt_head"] = float(record["ipw_tail"] > record["ipw_head"])
                record["acc_head"], record["acc_tail"] = group_accuracy(result.student, head, tail, seed)
                record["top1"] = result.summary["test_last"]["top1"]
                results[label].append(record)
        for label, records in results.items():
            row: dict[str, Any] = {"rho": rho, "method": label, "seeds": len(records)}
            for key in records[0]:
                row[key] = round(statistics.mean(r[key] for r in records), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
