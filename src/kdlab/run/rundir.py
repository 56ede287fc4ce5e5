"""The run directory: made once for a new run, checked before a resume, and its artifacts."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from kdlab.config.compare import refuse_resume_change
from kdlab.config.load import dump_config, read_yaml, validate
from kdlab.config.schema import RunConfig
from kdlab.core import checkpoint
from kdlab.core.errors import ConfigError
from kdlab.data import DataBundle
from kdlab.data.facts import FACTS_FILE
from kdlab.engine import Trainer
from kdlab.engine.hparams import write_hparams
from kdlab.engine.logger import TB_DIR
from kdlab.engine.selection import FINAL_MODEL_FILE
from kdlab.engine.trainer import CHECKPOINT_FORMAT
from kdlab.robustness import save_noisy_labels

LOCK_FILE = ".lock"


def make_run_dir(config: RunConfig) -> Path:
    """A new run's directory under ``out_dir`` (named by ``name``, or by method, student and time)."""
    name = config.name or f"{config.method.name}-{config.student.name.replace(':', '_')}-" \
                          f"{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.out_dir) / name
    if (run_dir / "last.pt").exists():
        raise ConfigError(f"name: run directory {run_dir} already holds a run; resume it with --resume "
                          f"{run_dir}, or choose another name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out_dir: cannot make the run directory {run_dir} ({exc.strerror})") from None
    return run_dir


def check_resumable(config: RunConfig, run_dir: Path) -> Path:
    """The run's ``last.pt``, once ``config`` is known to keep everything a resumed run must keep
    (``RESUME_FIXED``: its data, models, method, stages and seed) as the run's ``config.yaml`` has it
    and as the checkpoint itself recorded it (a hand-edited ``config.yaml`` does not pass)."""
    last = run_dir / "last.pt"
    if not last.is_file():
        raise ConfigError(f"--resume: {last} not found; nothing to resume")
    new = config.model_dump(mode="json")
    yaml_path = run_dir / "config.yaml"
    refuse_resume_change(validate(read_yaml(yaml_path), str(yaml_path)).model_dump(mode="json"), new,
                         f"its {yaml_path.name}")
    stored = checkpoint.read_config(last)
    if stored is None:
        raise checkpoint.CheckpointError(f"{last}: not a kdlab checkpoint (no config)")
    refuse_resume_change(validate(stored, str(last)).model_dump(mode="json"), new,
                         f"its checkpoint {last} (config.yaml was edited since?)")
    return last


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN_DIR/.lock`` (an advisory lock that a killed process releases) for the block; a second
    process on the same run directory gets one line naming the holder."""
    path = run_dir / LOCK_FILE
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{run_dir}: the run directory is in use by {holder}; wait for it to end or "
                              "choose another name") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()


def write_start(run_dir: Path, config: RunConfig, data: DataBundle) -> None:
    """What a run directory holds from the start: the resolved config, what its model needs to know of
    the data (``data.json``) and the labels it trains on."""
    checkpoint.write_text_atomic(run_dir / "config.yaml", dump_config(config))
    checkpoint.write_text_atomic(run_dir / FACTS_FILE, data.facts().to_json())
    save_noisy_labels(data, run_dir)


def write_end(run_dir: Path, trainer: Trainer, summary: dict[str, Any]) -> None:
    """The result's final model when no other file holds it, the run's row in TensorBoard's hparams view
    under ``train.tensorboard``, then ``summary.json`` naming the model's file."""
    if trainer.selection.writes_final_model:
        weights = {f"student.{k}": v for k, v in trainer.result_model().state_dict().items()}
        state = {"model": weights, "config": trainer.config, "step": trainer.step,
                 "format": CHECKPOINT_FORMAT, "selection": asdict(trainer.selection)}
        checkpoint.save_atomic(state, run_dir / FINAL_MODEL_FILE)
    summary["checkpoint"] = trainer.selection.result_name(run_dir)
    if trainer.cfg.tensorboard:
        write_hparams(run_dir / TB_DIR, trainer.config, summary, trainer.step)
    checkpoint.write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
