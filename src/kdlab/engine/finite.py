"""The finiteness guard of checkpoints: a state whose weights or optimizer state hold NaN or inf is never
written, so the previous ``last.pt`` stays a good point to resume from (with a lower learning rate)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from kdlab.core.errors import NonFiniteLossError


def named_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """Every tensor inside ``obj`` (nested dicts, lists and tuples) with its dotted path."""
    if isinstance(obj, Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from named_tensors(value, f"{prefix}.{index}" if prefix else str(index))


def first_non_finite(obj: Any) -> str | None:
    """The path of the first floating-point tensor in ``obj`` holding NaN or inf, or None."""
    for name, tensor in named_tensors(obj):
        if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def refuse_non_finite(state: dict[str, Any], step: int, losses: dict[str, Tensor]) -> None:
    """Raise a one-line :class:`NonFiniteLossError` naming the step, the tensor and the latest loss terms
    when the checkpoint ``state`` has a non-finite weight or optimizer entry."""
    bad = first_non_finite({"model": state["model"], "optimizer": state["optimizer"]})
    if bad is None:
        return
    terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items()) or "none logged yet"
    raise NonFiniteLossError(
        f"training diverged: {bad} is not finite at step {step} (latest loss terms: {terms}); the checkpoint "
        "was not written, so last.pt still holds the previous one: resume it with a lower optim.lr or "
        "train.grad_clip set")
