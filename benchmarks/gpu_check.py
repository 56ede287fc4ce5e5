"""GPU correctness of the fast path, as one short script for a session that is lent a GPU.

Checks, each timed and recorded on its own (a failure is written down and the next check runs):

  sync        every teacher -> student method trains 6 steps with ``torch.cuda.set_sync_debug_mode
              ("error")`` inside ``Trainer._train_step`` from the second step on: the CUDA driver itself
              reports any host synchronization (the CPU test ``tests/test_host_sync.py`` can only catch
              Python-level reads). ``bss`` is expected to sync (its attack picks a data-dependent number
              of samples). The device-resident data path's batches (crop + flip on the GPU) are checked
              the same way.
  precision   KD resnet32x4 -> resnet8x4 for 40 steps in fp32, bf16 and fp16 (grad scaler) from the
              same weights and batches: the first-step losses agree with fp32 and every run learns.
  compile     the same run in bf16 eager, ``train.compile`` and ``compile_mode: reduce-overhead``
              (CUDA graphs): first-step losses agree with eager and every run learns.
  cache       a replayable teacher cache filled on the GPU: on the replayed batches, the KD loss from
              the cached logits equals the live teacher's (fp16 tolerance), replay makes no host sync,
              and training from the cache learns.
  ddp_nccl    a one-process NCCL group: the DistributedDataParallel path, the metric all-reduce and the
              checkpoint barrier run on CUDA (one GPU cannot hold two NCCL ranks).

Usage: python benchmarks/gpu_check.py [--checks sync,precision,compile,cache,ddp_nccl] [--out PATH]
The JSON record is rewritten after every check, so a run stopped at its time limit keeps what it did.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import benchlib

SYNC_METHODS = ["ce", "kd", "dkd", "fitnet", "at", "fsp", "nst", "sp", "rkd", "pkt", "vid", "cc", "ab", "ft",
                "crd", "dml", "ipwd", "stagewise", "bss"]
PARAMS = {"crd": {"num_negatives": 64}}


def tree(work: Path, device: str, name: str, method: str = "kd", steps: int = 40,
         **train: Any) -> dict[str, Any]:
    """A run on synthetic 32x32 images, 100 classes, resnet32x4 -> resnet8x4 (CIFAR-100 recipe's pair)."""
    return {
        "data": {"name": "synthetic", "batch_size": 64, "val_fraction": 0.0, "augment": "standard",
                 "options": {"num_classes": 100, "num_train": 6400, "num_test": 640}},
        "student": {"name": "resnet8x4"},
        "teacher": {"name": "resnet32x4"},
        "method": {"name": method, "params": PARAMS.get(method, {})},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "train": {"steps": steps, "device": device, "progress": False, "log_every": 1, **train},
        "out_dir": str(work), "name": name,
    }


def teacher_module() -> Any:
    import torch

    from kdlab.models import build_model

    torch.manual_seed(0)
    return build_model("resnet32x4", 100)


def train_losses(run_dir: Path) -> list[float]:
    from kdlab.engine.logger import read_metrics

    return [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"]


def losses_of(run: dict[str, Any]) -> list[float]:
    """The per-step training losses of a run given as a config tree (the teacher: ``teacher_module``)."""
    from kdlab.config import validate
    from kdlab.run import train

    return train_losses(train(validate(run), teacher=teacher_module()).run_dir)


def learns(losses: list[float]) -> bool:
    return all(map(_finite, losses)) and sum(losses[-5:]) < sum(losses[:5])


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def check_sync(work: Path, device: str) -> dict[str, Any]:

    from kdlab.assembly import build_run_data
    from kdlab.config import validate
    from kdlab.core.runtime import Runtime
    from kdlab.engine.trainer import Trainer
    from kdlab.run import train

    step = Trainer._train_step

    def guarded(self: Trainer, batch: Any) -> Any:
        if self.step == 0:
            return step(self, batch)
        with syncs_raise():
            return step(self, batch)

    found: dict[str, str] = {}
    Trainer._train_step = guarded
    try:
        for method in SYNC_METHODS:
            run = tree(work, device, f"sync-{method}", method, steps=6, precision="bf16", log_every=1000)
            if method == "dml":
                run.pop("teacher")
            try:
                train(validate(run), teacher=None if method == "dml" else teacher_module(), write=False)
                found[method] = "no sync"
            except RuntimeError as error:
                found[method] = ("sync: " if "synchroniz" in str(error) else "error: ") + _where(error)
    finally:
        Trainer._train_step = step
    config = validate(tree(work, device, "sync-data"))
    data_path = batches_sync_free(build_run_data(config, Runtime(device, seed=config.train.seed)).train)
    unexpected = [m for m, verdict in found.items() if verdict != "no sync" and m != "bss"]
    ok = not unexpected and data_path == "no sync"
    return {"ok": ok, "unexpected_syncs": unexpected, "methods": found, "device_resident_data": data_path}


@contextlib.contextmanager
def syncs_raise() -> Iterator[None]:
    """Any synchronizing CUDA call raises inside the block."""
    import torch

    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def batches_sync_free(source: Any, count: int = 10) -> str:
    """Iterate ``count`` training batches of ``source`` with syncs raising after the first batch."""
    source.set_epoch(0)
    batches = iter(source)
    next(batches)
    try:
        with syncs_raise():
            for _ in range(count - 1):
                next(batches)
    except RuntimeError as error:
        return "sync: " + _where(error)
    return "no sync"


def _where(error: BaseException) -> str:
    """The error's message and its innermost frame in the kdlab package."""
    import kdlab

    package = str(Path(kdlab.__file__).parent)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(package)]
    place = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].line})" if frames else ""
    return str(error).splitlines()[0][:200] + place


def compare_runs(work: Path, device: str, variants: dict[str, dict[str, Any]], reference: str,
                 first_step_rtol: float) -> dict[str, Any]:
    runs = {name: losses_of(tree(work, device, name, **train)) for name, train in variants.items()}
    first = runs[reference][0]
    report = {name: {"first_loss": losses[0], "last5_mean": sum(losses[-5:]) / 5, "learns": learns(losses),
                     "first_step_rel_diff": abs(losses[0] - first) / abs(first)}
              for name, losses in runs.items()}
    ok = all(r["learns"] and r["first_step_rel_diff"] <= first_step_rtol for r in report.values())
    return {"ok": ok, "first_step_rtol": first_step_rtol, "runs": report}


def check_precision(work: Path, device: str) -> dict[str, Any]:
    kinds = ("fp32", "bf16", "fp16") if device == "cuda" else ("fp32", "bf16")
    variants = {f"precision-{p}": {"precision": p} for p in kinds}
    return compare_runs(work, device, variants, "precision-fp32", first_step_rtol=0.02)


def check_compile(work: Path, device: str) -> dict[str, Any]:
    graphs = {"compile": True, "compile_mode": "reduce-overhead"}
    variants = {"compile-eager": {"precision": "bf16"},
                "compile-default": {"precision": "bf16", "compile": True},
                "compile-cudagraphs": {"precision": "bf16", **graphs}}
    return compare_runs(work, device, variants, "compile-eager", first_step_rtol=0.02)


def check_cache(work: Path, device: str) -> dict[str, Any]:
    import torch

    from kdlab.assembly import build_run_data, build_run_distiller
    from kdlab.config import validate
    from kdlab.core.runtime import Runtime
    from kdlab.engine.precision import resolve_precision
    from kdlab.methods import kd_loss
    from kdlab.run import train
    from kdlab.run.teacher_cache import attach_teacher_cache
    from kdlab.teacher_cache import fill_teacher_cache

    weights = work / "cache-teacher.pt"
    torch.save(teacher_module().state_dict(), weights)
    run = tree(work, device, "cache", steps=100 if device == "cuda" else 20)
    run["teacher"]["checkpoint"] = str(weights)
    run["teacher_cache"] = {"path": str(work / "cache"), "epochs": 2}
    config = validate(run)
    fill_teacher_cache(config)
    where = torch.device(device)
    data = build_run_data(config, Runtime(where, seed=config.train.seed))
    distiller = build_run_distiller(config, data).place(where).eval()
    attach_teacher_cache(config, data, distiller, where)
    autocast = resolve_precision(config.train.precision, where).autocast()
    loss_diffs = []
    for epoch in range(2):
        data.train.set_epoch(epoch)
        for index, batch in enumerate(data.train):
            if index == 10:
                break
            with torch.no_grad(), autocast:
                live, student = distiller.teacher_logits(batch.inputs), distiller.student(batch.inputs)
            cached = kd_loss(student, batch.teacher["logits"])
            loss_diffs.append(float((cached - kd_loss(student, live)).abs() / kd_loss(student, live)))
    replay = batches_sync_free(data.train) if device == "cuda" else "not checked (no CUDA)"
    losses = train_losses(train(config).run_dir)
    worst = max(loss_diffs)
    ok = worst < 1e-2 and learns(losses) and replay in ("no sync", "not checked (no CUDA)")
    return {"ok": ok, "max_kd_loss_rel_diff": worst, "learns": learns(losses), "replay_data": replay}


def check_ddp_nccl(work: Path, device: str) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(0)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        losses = losses_of(tree(work, device, "ddp-nccl", precision="bf16"))
        backend = dist.get_backend()
    finally:
        dist.destroy_process_group()
    return {"ok": backend == "nccl" and learns(losses), "backend": backend, "learns": learns(losses)}


CHECKS: dict[str, Callable[[Path, str], dict[str, Any]]] = {
    "sync": check_sync, "precision": check_precision, "compile": check_compile, "cache": check_cache,
    "ddp_nccl": check_ddp_nccl,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", default=",".join(CHECKS))
    parser.add_argument("--device", default="cuda", help="cpu runs precision (bf16/fp32), compile and "
                        "cache at CPU speed, to check the script itself")
    parser.add_argument("--out", default=str(benchlib.HERE / "results" / "gpu_check.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="kdlab-gpu-check-"))
    results: dict[str, Any] = {"machine": benchlib.machine_info()}
    for name in args.checks.split(","):
        began = time.perf_counter()
        try:
            results[name] = CHECKS[name](work, args.device)
        except Exception as error:  # noqa: BLE001 - a failed check is a result, and the next one runs
            results[name] = {"ok": False, "error": _where(error), "traceback": traceback.format_exc()[-3000:]}
        results[name]["seconds"] = round(time.perf_counter() - began, 1)
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "traceback"}), flush=True)
        benchlib.write_result(args.out, "gpu_check", results, started)


if __name__ == "__main__":
    main()
