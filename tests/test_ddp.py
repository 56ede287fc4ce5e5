"""Two CPU processes under torchrun (gloo) train to the same weights as one process, same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from kdlab.core.checkpoint import load
from kdlab.models import build_model

COMPOSED = {"name": "composed",
            "params": {"parts": [{"name": "kd"}, {"name": "at", "weights": {"ce": 0.0, "at": 10.0}}]}}


def write_config(tmp_path, name, method, batchnorm=False, batch_size=32, **train):
    config = {
        "data": {"name": "digits", "batch_size": batch_size, "val_fraction": 0.2, "augment": "none"},
        "student": {"name": "cnn_tiny", "kwargs": {"batchnorm": batchnorm}},
        "method": method,
        "optim": {"name": "sgd", "lr": 0.1},
        "train": {"steps": 12, "eval_every": 6, "precision": "fp32", "progress": False, **train},
        "out_dir": str(tmp_path),
        "name": name,
    }
    if method["name"] != "ce":
        torch.manual_seed(0)
        teacher = tmp_path / "teacher.pt"
        torch.save(build_model("cnn_small", 10, in_channels=1, batchnorm=False).state_dict(), teacher)
        config["teacher"] = {"name": "cnn_small", "kwargs": {"batchnorm": False}, "checkpoint": str(teacher)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("method", [{"name": "ce"}, COMPOSED], ids=["ce", "composed_kd_at"])
def test_two_gloo_processes_match_one_process(tmp_path, method):
    single_config = write_config(tmp_path, "single", method)
    ddp_config = write_config(tmp_path, "ddp", method)
    run([sys.executable, "-m", "kdlab.cli.main", "train", str(single_config), "--quiet"])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "kdlab.cli.main", "train", str(ddp_config), "--quiet"])
    single, ddp = load(tmp_path / "single" / "last.pt"), load(tmp_path / "ddp" / "last.pt")
    assert single["step"] == ddp["step"] == 12
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    single_summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    ddp_summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp_summary["world_size"] == 2
    for split in ("val_last", "test_last"):
        assert ddp_summary[split]["n"] == single_summary[split]["n"] > 0
        assert abs(ddp_summary[split]["top1"] - single_summary[split]["top1"]) < 0.5


def test_batchnorm_under_two_processes_uses_the_global_batch_statistics(tmp_path):
    """With ``train.sync_batchnorm`` (the default) a BatchNorm student trains under 2 gloo processes to
    the weights and running statistics of one process; without it each process normalizes with its own
    half batch and the running statistics drift away from one process's."""
    run([sys.executable, "-m", "kdlab.cli.main", "train",
         str(write_config(tmp_path, "single", {"name": "ce"}, batchnorm=True)), "--quiet"])
    for name, sync in (("synced", True), ("local", False)):
        config = write_config(tmp_path, name, {"name": "ce"}, batchnorm=True, sync_batchnorm=sync)
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             "-m", "kdlab.cli.main", "train", str(config), "--quiet"])
    single = load(tmp_path / "single" / "last.pt")["model"]
    synced = load(tmp_path / "synced" / "last.pt")["model"]
    local = load(tmp_path / "local" / "last.pt")["model"]
    running = [key for key in single if key.endswith("running_var")]
    assert running
    for key, value in single.items():
        torch.testing.assert_close(synced[key], value, rtol=1e-4, atol=1e-5, msg=key)
    drift = max((local[key] - single[key]).abs().max().item() for key in running)
    assert drift > 1e-3


def test_two_processes_accumulating_two_micro_batches_match_one_process_with_the_whole_batch(tmp_path):
    """Global batches of 16 (8 a rank), 2 a step: one optimizer step per 32 samples, all-reduced once."""
    single_config = write_config(tmp_path, "single", {"name": "ce"})
    run([sys.executable, "-m", "kdlab.cli.main", "train", str(single_config), "--quiet"])
    config = write_config(tmp_path, "ddp", {"name": "ce"}, batch_size=16, accumulate_grad_batches=2)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "kdlab.cli.main", "train", str(config), "--quiet"])
    single, ddp = load(tmp_path / "single" / "last.pt"), load(tmp_path / "ddp" / "last.pt")
    assert single["step"] == ddp["step"] == 12
    assert single["images_seen"] == ddp["images_seen"] == 12 * 32
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
