"""A frozen model made cheaper to run, once, without changing what it computes beyond the precision in use.

- BatchNorm folded into the convolution before it (:mod:`kdlab.models.fold`), exact in fp32 up to rounding.
- The weights of the layers autocast computes in low precision (convolutions and linear layers) cast to
  that dtype once, instead of by autocast at every forward: autocast then finds them in its dtype and
  casts nothing, so the numbers are those of the plain model under the same autocast (norm layers keep
  their fp32 parameters, as under autocast). The model must then run under that autocast.
- channels_last once, for 4-D convnets.
- ``torch.compile`` of the model alone with inductor's freezing (weights as constants, folded into the
  graph; applied to no-grad calls, the way a frozen teacher runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from kdlab.models.fold import FoldReport, fold_batchnorm


@dataclass(frozen=True)
class FastPlan:
    """Which pieces of the fast path apply: ``dtype`` is the autocast dtype to cast weights to (None:
    no cast), ``compile_mode`` a ``torch.compile`` mode."""

    fold_bn: bool = True
    dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"


def cast_compute_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the parameters and buffers of every convolution and linear layer to ``dtype``; returns how
    many tensors were cast."""
    count = 0
    for module in model.modules():
        if isinstance(module, (_ConvNd, nn.Linear)):
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor.data = tensor.data.to(dtype)
                    count += 1
    return count


def prepare_frozen(model: nn.Module, plan: FastPlan, input_shape: Sequence[int] | None = None
                   ) -> FoldReport | None:
    """Fold, cast and reformat ``model`` (in eval mode) in place as ``plan`` says; the fold's report, or
    None without folding. ``input_shape`` (C, H, W) lets the fold export a model fx cannot trace."""
    report = fold_batchnorm(model, input_shape) if plan.fold_bn else None
    if plan.dtype is not None:
        cast_compute_weights(model, plan.dtype)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    return report


def compile_frozen(model: nn.Module, mode: str = "default") -> None:
    """``model.compile`` in ``mode`` with inductor's freezing on, for this model alone."""
    options = {**torch._inductor.list_mode_options(mode), "freezing": True}
    model.compile(options=options)


def describe(name: str, plan: FastPlan, report: FoldReport | None) -> list[str]:
    """Log lines saying what the fast path did to the model ``name``."""
    lines = []
    if report is not None and report.untraceable is not None:
        lines.append(f"{name}: BatchNorm not folded: neither torch.fx nor torch.export can trace it "
                     f"({report.untraceable})")
    elif report is not None:
        kept = f"; {len(report.kept)} kept for feature taps ({', '.join(b for _, b in report.kept)})" \
            if report.kept else ""
        lines.append(f"{name}: {len(report.folded)} BatchNorm layers folded into their convolutions{kept}")
    pieces = [f"weights cast to {str(plan.dtype).removeprefix('torch.')}" if plan.dtype else "",
              "channels_last" if plan.channels_last else "",
              f"compiled ({plan.compile_mode}, freezing)" if plan.compile else ""]
    if any(pieces):
        lines.append(f"{name}: {', '.join(p for p in pieces if p)}")
    return lines
