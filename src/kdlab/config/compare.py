"""What a resumed run or a re-evaluation may not change, found by comparing config trees key by key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kdlab.core.errors import ConfigError

#: a resumed run keeps what it trains on and what it trains: its data, models, method, plan and seed, and
#: how many batches make an optimizer step (what its step count means)
RESUME_FIXED = ("data", "student", "teacher", "teachers", "method", "averaging", "stages", "train.seed",
                "train.accumulate_grad_batches")
#: data settings that say where the data is or how batches are made, not which samples or labels they hold
RESUME_FREE = ("data.root", "data.num_workers", "data.eval_batch_size", "data.device_resident")
#: the settings that decide which samples (and labels) make up the training and validation splits
SPLIT_KEYS = ("data.name", "data.val_fraction", "data.split_seed", "data.subset", "data.noise",
              "data.imbalance", "data.options")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves, an empty mapping is one."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def is_under(path: str, prefixes: Iterable[str]) -> bool:
    """Whether dotted ``path`` is one of ``prefixes`` or lies inside one (``a.b`` is under ``a``)."""
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def first_change(old: Mapping[str, Any], new: Mapping[str, Any], fixed: Sequence[str],
                 free: Sequence[str] = ()) -> tuple[str, Any, Any] | None:
    """The first dotted key under ``fixed`` (and not under ``free``) whose value differs between the
    two trees, with its old and new values (``None`` where a tree lacks it); None when all agree."""
    flat_old, flat_new = flatten(old), flatten(new)
    for path in sorted(flat_old.keys() | flat_new.keys()):
        if is_under(path, fixed) and not is_under(path, free) and flat_old.get(path) != flat_new.get(path):
            return path, flat_old.get(path), flat_new.get(path)
    return None


def refuse_resume_change(saved: Mapping[str, Any], new: Mapping[str, Any], where: str = "the run") -> None:
    """Raise the one-line ``ConfigError`` a resume gets when ``new`` changes a key under ``RESUME_FIXED``
    (and not under ``RESUME_FREE``) of the run's ``saved`` config tree (``where`` names its source)."""
    change = first_change(saved, new, RESUME_FIXED, RESUME_FREE)
    if change is not None:
        key, old, value = change
        raise ConfigError(f"{key}: a resumed run cannot change it ({where} has {old!r}, this config "
                          f"{value!r}); start a new run to train with it")
