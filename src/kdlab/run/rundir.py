"""The run directory: made once for a new run, checked before a resume, and its artifacts."""

from __future__ import annotations

import json
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
from kdlab.engine import Trainer
from kdlab.engine.selection import FINAL_MODEL_FILE
from kdlab.engine.trainer import CHECKPOINT_FORMAT
from kdlab.robustness import save_noisy_labels


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
    (``RESUME_FIXED``: its data, models, method, stages and seed) as the run's ``config.yaml`` has it."""
    last = run_dir / "last.pt"
    if not last.is_file():
        raise ConfigError(f"--resume: {last} not found; nothing to resume")
    saved = validate(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    refuse_resume_change(saved.model_dump(mode="json"), config.model_dump(mode="json"))
    return last


def write_start(run_dir: Path, config: RunConfig, data: DataBundle) -> None:
    """What a run directory holds from the start: the resolved config and the labels it trains on."""
    (run_dir / "config.yaml").write_text(dump_config(config))
    save_noisy_labels(data, run_dir)


def write_end(run_dir: Path, trainer: Trainer, summary: dict[str, Any]) -> None:
    """The result's final model when no other file holds it, then ``summary.json`` naming its file."""
    if trainer.selection.writes_final_model:
        weights = {f"student.{k}": v for k, v in trainer.result_model().state_dict().items()}
        state = {"model": weights, "config": trainer.config, "step": trainer.step,
                 "format": CHECKPOINT_FORMAT, "selection": asdict(trainer.selection)}
        checkpoint.save_atomic(state, run_dir / FINAL_MODEL_FILE)
    summary["checkpoint"] = trainer.selection.result_name(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
