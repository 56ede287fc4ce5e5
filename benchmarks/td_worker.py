"""torchdistill side of the benchmarks; run it with the interpreter of ``.venv-torchdistill``.

It trains with torchdistill 1.1.x's own machinery: the YAML config ``torchdistill_kd.yaml`` (read with
``torchdistill.common.yaml_util.load_yaml_file``), ``get_distillation_box`` (its DataLoader built from
the config, its optimizer and scheduler registry, ``WeightedSumLoss`` over ``KDLoss``), and the epoch
loop of torchdistill's image-classification example entry: ``pre_epoch_process``, ``forward_process``,
``post_forward_process`` (backward + optimizer step), ``post_epoch_process``, with ``MetricLogger``
logging and a per-step ``loss.item()``. The entry script itself is not part of the torchdistill wheel,
so this file drives the same public API in that order.

torchdistill has no resnet32x4/resnet8x4, and its own resnet20/resnet56 are other implementations: kdlab's
zoo models are registered into torchdistill's model registry as ``kdlab.<name>`` (the config's model keys
are kdlab names), so the architectures are kdlab's, bit for bit. Data: the images kdlab
uses (its synthetic generator, or its decoded CIFAR-10 JPEG tar), served the way torchvision's CIFAR10
dataset serves them (a PIL image per sample, then torchvision transforms) through torchdistill's
DataLoader. Precision is fp32, torchdistill's default.

Modes:
  throughput  synthetic data, ``--warmup`` + ``--steps`` steps of ``--teacher`` -> ``--student``, reports
              steady-state img/s
  accuracy    a CIFAR-10 slice, ``--epochs`` epochs from a given teacher checkpoint, saves the student
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

CONFIG = Path(__file__).resolve().parent / "torchdistill_kd.yaml"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class UInt8ImageDataset(Dataset):
    """uint8 N x C x H x W images served like ``torchvision.datasets.CIFAR10``: PIL image, then transform."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        if self.images.shape[-1] == 1:
            self.images = self.images[..., 0]
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.targets[index]


def register_kdlab_model(name: str) -> str:
    """Put the kdlab zoo model ``name`` into torchdistill's model registry; returns its key there,
    ``kdlab.<name>`` (never one of torchdistill's own models of the same name)."""
    from torchdistill.models.registry import MODEL_DICT, register_model

    from kdlab.models import build_model

    key = f"kdlab.{name}"
    if key not in MODEL_DICT:
        register_model(key=key)(functools.partial(build_model, name))
    return key


def load_config(path: Path) -> dict[str, Any]:
    from torchdistill.common import yaml_util

    return yaml_util.load_yaml_file(str(path))


def build_models(config: dict[str, Any], num_classes: int, seed: int, device: torch.device):
    """Teacher, then student, from the registry (seeded like the kdlab workers); teacher frozen in eval."""
    from torchdistill.common.main_util import load_ckpt
    from torchdistill.models.registry import get_model

    models = config["models"]
    torch.manual_seed(seed)
    built = []
    for role in ("teacher_model", "student_model"):
        spec = models[role]
        kwargs = dict(spec.get("kwargs") or {}, num_classes=num_classes)
        model = get_model(register_kdlab_model(spec["key"]), None, **kwargs)
        if spec.get("src_ckpt"):
            load_ckpt(spec["src_ckpt"], model=model, strict=True)
        built.append(model.to(device))
    teacher, student = built
    # torchdistill's DistillationBox freezes the teacher's parameters (requires_grad: False) and runs it
    # under no_grad, but never calls teacher.eval(); the benchmark pins eval mode so that every
    # framework runs the same frozen, eval-mode, no-grad teacher.
    teacher.eval()
    return teacher, student


def train_loop(box, device: torch.device, log_freq: int, max_steps: int | None) -> list[tuple[float, float]]:
    """torchdistill's per-epoch training sequence; returns a (wall, CPU) mark at the end of every step."""
    from torchdistill.misc.log import MetricLogger, SmoothedValue

    ends: list[tuple[float, float]] = []
    for epoch in range(box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        metric_logger = MetricLogger(delimiter="  ")
        metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value}"))
        metric_logger.add_meter("img/s", SmoothedValue(window_size=10, fmt="{value}"))
        for sample_batch, targets, supp_dict in metric_logger.log_every(
                box.train_data_loader, log_freq, f"Epoch: [{epoch}]"):
            start = time.time()
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            metric_logger.update(loss=loss.item(), lr=box.optimizer.param_groups[0]["lr"])
            metric_logger.meters["img/s"].update(sample_batch.shape[0] / (time.time() - start))
            if torch.isnan(loss) or torch.isinf(loss):
                raise ValueError(f"loss became {loss}")
            ends.append(benchlib.mark())
            if max_steps is not None and len(ends) >= max_steps:
                break
        box.post_epoch_process()
    return ends


def make_box(config: dict[str, Any], teacher, student, dataset_dict, device: torch.device):
    from torchdistill.core.distillation import get_distillation_box

    return get_distillation_box(teacher, student, dataset_dict, config["train"], device, None, False, 1)


def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    from kdlab.data.raw import channel_stats
    from kdlab.data.synthetic import load_synthetic

    baseline = benchlib.current_rss_mib()
    device = torch.device("cpu")
    config = load_config(Path(args.config))
    total = args.warmup + args.steps
    num_classes = config["models"]["student_model"]["kwargs"]["num_classes"]
    batch = config["train"]["train_data_loader"]["kwargs"]["batch_size"]
    # The images kdlab's synthetic dataset yields for the same options (data_seed 0), normalized with
    # the training images' channel statistics, as kdlab normalizes them.
    raw = load_synthetic(num_classes=num_classes, num_train=batch * total, num_test=64)
    mean, std = channel_stats(raw.train.images)
    transform = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    dataset_dict = {"train": UInt8ImageDataset(raw.train.images, raw.train.targets, transform)}
    config["train"]["num_epochs"] = 1
    config["train"]["train_data_loader"]["kwargs"]["num_workers"] = args.workers
    config["models"]["teacher_model"]["key"] = args.teacher
    config["models"]["student_model"]["key"] = args.student
    torch.manual_seed(args.seed)
    teacher, student = build_models(config, num_classes, args.seed, device)
    box = make_box(config, teacher, student, dataset_dict, device)
    ends = train_loop(box, device, config["train"]["log_freq"], total)
    if len(ends) != total:
        raise RuntimeError(f"expected {total} steps, ran {len(ends)}")
    return {
        **benchlib.steady_stats(ends, args.warmup, batch),
        "precision": "fp32",
        "baseline_rss_mib": baseline,
        "peak_rss_mib": benchlib.peak_rss_mib(),
        "worker_peak_rss_mib": benchlib.peak_rss_mib(children=True),
        "torchdistill_version": __import__("torchdistill").__version__,
        "kdlab_models_from": str(Path(__import__("kdlab").__file__).parent),
    }


def run_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """KD on a CIFAR-10 slice (given as a .pt of uint8 images/labels) from a teacher checkpoint."""
    device = torch.device("cpu")
    config = load_config(Path(args.config))
    data = torch.load(args.data, weights_only=True)
    num_classes = int(data["num_classes"])
    train_tf = T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(0.5), T.ToTensor(),
        T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    dataset_dict = {"train": UInt8ImageDataset(data["train_images"], data["train_targets"], train_tf)}
    train_cfg = config["train"]
    train_cfg["num_epochs"] = args.epochs
    train_cfg["train_data_loader"]["kwargs"]["num_workers"] = args.workers
    train_cfg["train_data_loader"]["kwargs"]["drop_last"] = True  # kdlab drops the last partial batch too
    train_cfg["scheduler"] = {"key": "MultiStepLR",
                              "kwargs": {"milestones": args.milestones, "gamma": 0.1}}
    models = config["models"]
    models["teacher_model"]["key"], models["student_model"]["key"] = args.teacher, args.student
    models["teacher_model"]["src_ckpt"] = args.teacher_ckpt
    models["student_model"]["src_ckpt"] = args.student_init
    torch.manual_seed(args.seed)
    teacher, student = build_models(config, num_classes, args.seed, device)
    box = make_box(config, teacher, student, dataset_dict, device)
    start_wall, start_cpu = benchlib.mark()
    ends = train_loop(box, device, config["train"]["log_freq"], None)
    train_s, cpu_s = (e - s for e, s in zip(benchlib.mark(), (start_wall, start_cpu), strict=True))
    torch.save(student.state_dict(), args.save_student)
    return {
        "train_wall_s": round(train_s, 1),
        "steps": len(ends),
        "img_per_s": round(len(ends) * train_cfg["train_data_loader"]["kwargs"]["batch_size"] / train_s, 1),
        "cpu_share": round(cpu_s / (train_s * (os.cpu_count() or 1)), 3),
        "peak_rss_mib": benchlib.peak_rss_mib(),
        "student_state": args.save_student,
        "torchdistill_version": __import__("torchdistill").__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="torchdistill runs for kdlab's benchmarks")
    parser.add_argument("mode", choices=["throughput", "accuracy"])
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader num_workers")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--data", help="accuracy: .pt with train_images/train_targets/num_classes")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--milestones", type=lambda s: [int(v) for v in s.split(",") if v], default=[])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--teacher-ckpt")
    parser.add_argument("--student-init", help="accuracy: initial student weights (state_dict .pt)")
    parser.add_argument("--save-student")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from torchdistill.misc.log import set_basic_log_config

    set_basic_log_config()
    logging.getLogger().setLevel(logging.INFO)
    result = run_throughput(args) if args.mode == "throughput" else run_accuracy(args)
    print(json.dumps({"mode": args.mode}), file=sys.stderr)
    benchlib.emit(result)


if __name__ == "__main__":
    main()
