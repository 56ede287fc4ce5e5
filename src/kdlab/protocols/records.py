"""What a study keeps on disk besides its run directories: job status files and ``results.jsonl``.

``STUDY/status/<job>.json`` holds the job's state (``running``, ``done``, ``failed``, ``interrupted``,
``blocked``), the attempt count, the child's pid and exit code and the config digest. ``results.jsonl``
gets one line per finished run (appended once: a run is never listed twice; the line's format is
:mod:`.result_line`'s). Every append starts on a fresh line, so a line torn by a crash costs only itself,
and the run whose line it was is listed again by the next rerun. A ``summary.json`` that cannot be read
(torn by a crash) means an unfinished run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

RESULTS = "results.jsonl"


def config_digest(tree: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_status(study_dir: Path, job_id: str) -> dict[str, Any]:
    path = study_dir / "status" / f"{job_id}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_status(study_dir: Path, job_id: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the job's status file (written atomically) and return it."""
    status = {**read_status(study_dir, job_id), **fields, "updated": round(time.time(), 3)}
    path = study_dir / "status" / f"{job_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=1) + "\n")
    os.replace(tmp, path)
    return status


def read_results(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``results.jsonl``. A torn line (a crash mid-write, which the next append may
    extend) is skipped: its run is then not listed, and the study lists it again from its summary."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``summary.json``, or None when it is missing or unreadable (the run has not finished)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def ends_mid_line(path: Path) -> bool:
    """Whether ``path`` is a non-empty file whose last byte is not a newline (a torn last line)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def append_result(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line, on a fresh line even after a torn one."""
    prefix = "\n" if ends_mid_line(path) else ""
    with path.open("a") as handle:
        handle.write(prefix + json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
