"""Mixed precision: bf16 autocast where the device supports it, fp16 with a grad scaler on CUDA."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from kdlab.core.errors import ConfigError


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """The resolved precision: the autocast dtype (None for fp32) and whether a grad scaler is used."""

    name: str
    dtype: torch.dtype | None
    device_type: str

    @property
    def uses_scaler(self) -> bool:
        return self.dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.uses_scaler)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``auto`` picks bf16 where supported, else fp16 on CUDA, else fp32; explicit choices are checked."""
    kind = device.type
    if kind == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
    elif kind == "cpu":
        bf16_ok = cpu_supports_bf16()
    else:
        bf16_ok = False
    if requested == "auto":
        requested = "bf16" if bf16_ok else ("fp16" if kind == "cuda" else "fp32")
    if requested == "bf16" and not bf16_ok:
        raise ConfigError(f"train.precision: bf16 is not supported on this {kind} device; use fp32")
    if requested == "fp16" and kind != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[requested]
    return Precision(requested, dtype, kind)
