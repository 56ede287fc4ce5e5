"""Run files survive interrupts, full disks and hand edits: one line for the user, nothing lost or doubled."""

import errno
import json
import os
import shutil
from collections import Counter

import pytest
import torch
import yaml

from kdlab.cli.main import main
from kdlab.core import checkpoint
from kdlab.core.errors import DiskFullError
from kdlab.engine.logger import MetricsLogger, read_metrics, scalar_tags
from tests.helpers import one_line_error, write


def record_keys(run_dir):
    return Counter((r["kind"], r["step"], r.get("model")) for r in read_metrics(run_dir))


def test_resume_drops_records_past_the_checkpoint_and_a_torn_line(capsys, finished_run):
    with (finished_run / "metrics.jsonl").open("a") as handle:  # logged after last.pt, then killed
        handle.write(json.dumps({"kind": "train", "step": 4, "loss": 1.0}) + "\n")
        handle.write('{"kind": "train", "st')
    assert main(["train", "--resume", str(finished_run), "train.steps=6", "train.log_every=1",
                 "--quiet"]) == 0
    text = (finished_run / "metrics.jsonl").read_text()
    assert all(json.loads(line) for line in text.splitlines())
    keys = record_keys(finished_run)
    assert max(keys.values()) == 1
    assert keys[("train", 4, None)] == 1 and keys[("train", 6, None)] == 1 and keys[("eval", 3, "student")]


def test_a_new_start_without_last_pt_starts_the_log_afresh(tmp_path, capsys, quick):
    run_dir = tmp_path / "runs" / "quick"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "old": True}) + "\n")
    assert main(["train", write(tmp_path, quick()), "--quiet"]) == 0
    assert not any(r.get("old") for r in read_metrics(run_dir)) and read_metrics(run_dir)


def test_readers_skip_a_torn_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "eval", "step": 1}\n{"kind": "ev')
    assert read_metrics(tmp_path) == [{"kind": "eval", "step": 1}]


def test_tensorboard_has_one_tag_per_model():
    tags = scalar_tags("eval", {"model": "peer1", "split": "val", "top1": 50.0, "nll": 1.0})
    assert tags == {"eval/peer1/top1": 50.0, "eval/peer1/nll": 1.0}
    assert scalar_tags("train", {"loss": 2.0, "stage": "train"}) == {"train/loss": 2.0}


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_checkpoints_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        checkpoint.save_atomic({"a": torch.zeros(2)}, tmp_path / "x.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o666 & ~mask


def failing_save(exc):
    def save(state, handle):
        handle.write(b"partial")
        raise exc

    return save


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"w": torch.ones(3)}, path)
    monkeypatch.setattr(checkpoint.torch, "save", failing_save(error))
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(DiskFullError) as info:
        checkpoint.save_atomic({"w": torch.zeros(1000)}, path)
    message = str(info.value)
    assert str(path) in message and "no space left" in message and "previous last.pt is kept" in message
    assert "\n" not in message
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_full_disk_during_a_run_is_one_line(tmp_path, capsys, monkeypatch, quick):
    real_save = torch.save
    calls = []

    def save(state, handle):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, handle)

    monkeypatch.setattr(torch, "save", save)
    err = one_line_error(capsys, ["train", write(tmp_path, quick(train={"steps": 4, "epochs": None,
                                                                        "eval_every": 1})), "--quiet"])
    assert "no space left" in err and ("last.pt" in err or "best.pt" in err) and "KiB" in err
    monkeypatch.undo()
    run_dir = tmp_path / "runs" / "quick"
    assert checkpoint.load(run_dir / "last.pt")["step"] >= 1
    assert not list(run_dir.glob(".*.tmp"))


def test_a_full_disk_for_any_run_file_is_one_line(tmp_path, capsys, monkeypatch, quick):
    def log(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(MetricsLogger, "log", log)
    err = one_line_error(capsys, ["train", write(tmp_path, quick()), "--quiet"])
    assert "metrics.jsonl: no space left on the device" in err


def test_stale_temp_files_are_removed_on_resume(capsys, finished_run):
    stale = finished_run / ".last.pt.k2j3h4.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = finished_run / "notes.tmp"
    other.write_text("mine")
    assert main(["train", "--resume", str(finished_run), "train.steps=4", "--quiet"]) == 0
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda s: s.pop("rng"), "'rng' entry is missing"),
    (lambda s: s.pop("scheduler"), "'scheduler' entry is missing"),
    (lambda s: s.update(step="3"), "'step' entry is a str, expected int"),
    (lambda s: s["rng"].pop("numpy"), "'rng.numpy' entry is missing"),
])
def test_a_damaged_checkpoint_is_one_line_naming_it(capsys, finished_run, edit, expected):
    path = finished_run / "last.pt"
    state = checkpoint.load(path)
    edit(state)
    torch.save(state, path)
    err = one_line_error(capsys, ["train", "--resume", str(finished_run), "train.steps=5", "--quiet"])
    assert str(path) in err and expected in err
    assert yaml.safe_load((finished_run / "config.yaml").read_text())["train"]["steps"] == 3
