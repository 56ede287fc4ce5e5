"""A finished run's row in TensorBoard's hparams view: its resolved config and the numbers of its summary.

The entry is one event file in the run's own TensorBoard directory (``RUN_DIR/tb``), so the row links to
the run's curves. It holds the hparams plugin's experiment, session start and session end summaries
(built by :func:`torch.utils.tensorboard.summary.hparams`) and one scalar per metric, all at the run's
last step. It is written when the run ends, atomically, under a name ending in :data:`HPARAMS_SUFFIX`;
the entry of an earlier end of the same run (a finished run resumed with a longer budget) is removed
first, so a run directory never holds two rows.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, BinaryIO

from kdlab.core.checkpoint import write_atomic

HPARAMS_SUFFIX = ".kdlab-hparams"
METRIC_PREFIX = "summary"
#: the bytes a TFRecord adds to each event: its length and two CRCs
RECORD_FRAMING = 16


def hparam_values(config: dict[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """The resolved config flattened to dotted keys (``method.name``, ``optim.lr``, ``data.mix.prob``);
    a value that is not an int, float, str or bool (None, a list) becomes its JSON text."""
    values: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            values.update(hparam_values(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            values[name] = value
        else:
            values[name] = json.dumps(value)
    return values


def summary_metrics(summary: dict[str, Any], prefix: str = METRIC_PREFIX) -> dict[str, float]:
    """Every number of ``summary.json`` (nested dicts followed, lists skipped) as
    ``summary/<key>/<key>`` tags: ``summary/test_selected/top1``, ``summary/selected/value``."""
    metrics: dict[str, float] = {}
    for key, value in summary.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, dict):
            metrics.update(summary_metrics(value, tag))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[tag] = float(value)
    return metrics


def hparams_events(config: dict[str, Any], summary: dict[str, Any], step: int) -> list[bytes]:
    """The serialized events of the hparams file: the file version, the three hparams summaries and one
    scalar per metric of ``summary``, at ``step``."""
    from tensorboard.compat.proto.event_pb2 import Event
    from torch.utils.tensorboard.summary import hparams, scalar

    metrics = summary_metrics(summary)
    now = time.time()
    events = [Event(wall_time=now, file_version="brain.Event:2")]
    parts = hparams(hparam_values(config), metrics)
    events += [Event(wall_time=now, step=step, summary=part) for part in parts]
    events += [Event(wall_time=now, step=step, summary=scalar(tag, value)) for tag, value in metrics.items()]
    return [event.SerializeToString() for event in events]


def write_hparams(tb_dir: Path, config: dict[str, Any], summary: dict[str, Any], step: int) -> Path:
    """Replace the run's hparams entry in ``tb_dir`` by one for ``config`` and ``summary``; its path.

    The file is named like TensorBoard's own (``events.out.tfevents.<time>.<host>``), so it sorts after
    the event files the run wrote before it; it is written under a name without ``tfevents`` (which
    TensorBoard does not read) and renamed, so TensorBoard never reads it half-written."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    events = hparams_events(config, summary, step)
    for old in tb_dir.glob(f"*{HPARAMS_SUFFIX}"):
        old.unlink()

    def write(handle: BinaryIO) -> None:
        records = RecordWriter(handle)
        for event in events:
            records.write(event)

    staged = tb_dir / f"hparams{HPARAMS_SUFFIX}.partial"
    write_atomic(staged, write, sum(len(event) + RECORD_FRAMING for event in events))
    path = tb_dir / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}{HPARAMS_SUFFIX}"
    os.replace(staged, path)
    return path
