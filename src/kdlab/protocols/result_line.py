"""The one ``results.jsonl`` line format of every protocol (``kdlab study`` and ``kdlab dg``).

After DomainBed's ``results.jsonl``: each finished run appends one JSON object with

- ``format`` (:data:`FORMAT`), ``protocol`` (``study`` or ``dg``), ``id``, ``run_dir`` (relative to the
  results file), ``config_digest`` (of the run's config) and ``seed``;
- ``axes``: the grid axes that produced the run and their values (a study: condition, pair, method,
  seed, and the draw of a hyper-parameter search; dg: config, target, seed);
- the protocol's identity fields, flat, for filtering (a study: role, condition, noise and imbalance
  settings, pair, model, teacher model and run, method; dg: config, dataset, target, target name, split
  seed, method, averaging);
- ``hparams``: the run's hyper-parameters as dotted keys (method, optimizer, schedule, averaging, batch
  size, budget), read from the config the run wrote;
- ``result``: which model is the result (``student``, ``averaged``, ...), which test figures are
  reported (``test_selected`` or ``test_last``) and the validation selection (metric, value, step);
- ``metrics``: every evaluated split of ``summary.json`` (``val_last``, ``test_last``,
  ``test_selected``, ``online_test_last``, ``reference_test``), each with top-1, NLL, ECE and, where
  the run has them, per-class and per-group accuracies; ``test``: the reported split;
- ``domains`` (dg): test accuracy per target domain;
- ``cost``: steps, epochs, wall and train time, step time, images per second, peak memory, parameters.

Lines written before this format (no ``format`` key) are read through :func:`upgrade`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kdlab.protocols.records import config_digest

FORMAT = 2
SPLITS = ("val_last", "test_last", "test_selected", "online_test_last", "reference_test")
HPARAM_SECTIONS = ("method", "optim", "schedule", "averaging")
HPARAM_KEYS = ("data.batch_size", "data.augment", "train.epochs", "train.steps",
               "train.accumulate_grad_batches", "teacher.name")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys to leaves (lists and scalars)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def hparams_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of a run config (its dumped tree) as dotted keys."""
    flat = flatten({key: config[key] for key in HPARAM_SECTIONS if isinstance(config.get(key), Mapping)})
    every = flatten(config)
    flat.update((key, every[key]) for key in HPARAM_KEYS if key in every)
    return flat


def run_config(run_dir: Path, fallback: Mapping[str, Any]) -> dict[str, Any]:
    """The config the run wrote (``run_dir/config.yaml``, every default filled in), else ``fallback``."""
    try:
        written = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        written = None
    return written if isinstance(written, dict) else dict(fallback)


def cost_of(summary: Mapping[str, Any]) -> dict[str, Any]:
    steps = summary.get("steps") or 0
    train_time = summary.get("train_time_s")
    return {
        "steps": steps,
        "epochs": summary.get("epochs"),
        "wall_time_s": summary.get("wall_time_s"),
        "train_time_s": train_time,
        "step_time_ms": round(1000 * train_time / steps, 2) if train_time is not None and steps else None,
        "img_per_s": summary.get("img_per_s"),
        "peak_mem_mb": summary.get("peak_mem_mb"),
        "student_params": summary.get("student_params"),
        "extra_params": summary.get("extra_params"),
        "precision": summary.get("precision"),
        "world_size": summary.get("world_size"),
    }


def reported_split(summary: Mapping[str, Any]) -> str:
    """The test split that is the run's result: the averaging strategy's choice, else the selected one."""
    return (summary.get("averaging") or {}).get("report", "test_selected")


def run_line(*, protocol: str, run_id: str, run_dir: Path, results_dir: Path, tree: Mapping[str, Any],
             axes: Mapping[str, Any], seed: int, identity: Mapping[str, Any], summary: Mapping[str, Any],
             hparams: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One results line (see the module docstring). ``tree`` is the config the protocol made for the
    run (its digest identifies the run); ``hparams`` (default: those of the config the run wrote)."""
    metrics = {split: summary[split] for split in SPLITS if summary.get(split) is not None}
    reported = reported_split(summary)
    return {
        "format": FORMAT,
        "protocol": protocol,
        "id": run_id,
        "run_dir": os.path.relpath(run_dir, results_dir),
        "config_digest": config_digest(dict(tree)),
        "seed": seed,
        "axes": dict(axes),
        **identity,
        "hparams": dict(hparams) if hparams is not None else hparams_of(run_config(run_dir, tree)),
        "result": {"model": summary.get("model", "student"), "reported": reported,
                   "selected": summary.get("selected")},
        "metrics": metrics,
        "test": metrics.get(reported),
        "cost": cost_of(summary),
    }


def _upgrade_study(record: dict[str, Any]) -> dict[str, Any]:
    metrics = {split: record.pop(split) for split in SPLITS if isinstance(record.get(split), dict)}
    cost = {key: record.pop(key, None) for key in ("steps", "epochs", "student_params", "train_time_s",
                                                   "wall_time_s")}
    return {**record, "format": FORMAT, "protocol": "study",
            "axes": {key: record.get(key) for key in ("condition", "pair", "method", "seed")},
            "hparams": {}, "result": {"model": "student", "reported": "test_selected",
                                      "selected": record.pop("selected", None)},
            "metrics": metrics, "test": metrics.get("test_selected"), "cost": cost_of(cost)}


def _upgrade_dg(record: dict[str, Any]) -> dict[str, Any]:
    reported = record.get("reported", "test_selected")
    metrics = {split: {"top1": record[split]} for split in ("test_last", "test_selected")
               if isinstance(record.get(split), (int, float))}
    metrics[reported] = {"top1": record["test_acc"]}
    if record.get("online_test_acc") is not None:
        metrics["online_test_last"] = {"top1": record["online_test_acc"]}
    keys = ("config", "dataset", "target", "target_name", "split_seed", "method", "averaging", "run_dir")
    return {**{key: record.get(key) for key in keys}, "format": FORMAT, "protocol": "dg",
            "id": str(record.get("run_dir")), "seed": record.get("seed"),
            "role": "teacher" if record.get("config") == "teacher" else "student",
            "axes": {key: record.get(key) for key in ("config", "target", "seed")}, "hparams": {},
            "result": {"model": "averaged" if record.get("averaging", "none") != "none" else "student",
                       "reported": reported, "selected": {"value": record.get("val_selected")}},
            "metrics": metrics, "test": metrics[reported],
            "domains": {str(record.get("target_name")): record["test_acc"]},
            "cost": cost_of({key: record.get(key) for key in ("steps", "train_time_s", "img_per_s")})}


def upgrade(record: dict[str, Any]) -> dict[str, Any] | None:
    """``record`` in the current format: as it is, or converted from an earlier kdlab's study or dg
    line (hyper-parameters and peak memory were not recorded then). None: not a results line."""
    if record.get("format") == FORMAT:
        return record
    if "format" in record:
        return None
    if isinstance(record.get("test_acc"), (int, float)) and "target" in record:
        return _upgrade_dg(dict(record))
    if "condition" in record and "id" in record:
        return _upgrade_study(dict(record))
    return None
