"""Shape adapters shared by feature methods: a regressor from a student map to a teacher map's shape,
spatial alignment of two maps, and the one-line check that student and teacher taps pair up.

:class:`ConvRegressor` is the regressor of RepDistiller's ``models/util.py::ConvReg`` (also used by
mdistiller), chosen from the maps' heights:

============================  ==================================================================
student height vs teacher     layer
============================  ==================================================================
``H_s == 2 * H_t``            3x3 conv, stride 2, padding 1
``2 * H_s == H_t``            4x4 transposed conv, stride 2, padding 1
``H_s >= H_t``                conv with kernel ``(1 + H_s - H_t, 1 + W_s - W_t)`` (1x1 when equal)
otherwise (kdlab only)        1x1 conv; the caller pools the teacher map down with
                              :func:`align_spatial` (RepDistiller raises here)
============================  ==================================================================

followed by BatchNorm and, when ``relu`` is set, a ReLU. Its output has the teacher's channels; its
spatial size equals the teacher's in the first three cases.

:func:`align_spatial` pools the larger of two maps to the size of the smaller (adaptive average
pooling, as RepDistiller and mdistiller do for AT, NST, FSP, FT and VID; max pooling as torchdistill
does for FSP), so maps from stages of different resolution can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.errors import ConfigError


def _chw(shape: Sequence[int]) -> tuple[int, int, int]:
    """(channels, height, width) of a ``C x H x W`` or ``B x C x H x W`` shape."""
    if len(shape) not in (3, 4):
        raise ValueError(f"expected a C x H x W feature-map shape, got {tuple(shape)}")
    channels, height, width = (int(v) for v in shape[-3:])
    return channels, height, width


class ConvRegressor(nn.Module):
    """RepDistiller's ``ConvReg``: conv (or transposed conv) + BN (+ ReLU) from the student map's shape
    to the teacher map's channels and, where the heights allow it, spatial size (module docstring)."""

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int], relu: bool) -> None:
        super().__init__()
        s_c, s_h, s_w = _chw(student_shape)
        t_c, t_h, t_w = _chw(teacher_shape)
        if s_h == 2 * t_h:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + max(s_w - t_w, 0)))
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=1)
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


def pool_to(x: Tensor, size: tuple[int, int], mode: Literal["avg", "max"] = "avg") -> Tensor:
    """``x`` adaptively pooled to ``size`` (returned unchanged when it already has that size)."""
    if tuple(x.shape[-2:]) == size:
        return x
    pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    return pool(x, size)


def align_spatial(a: Tensor, b: Tensor, mode: Literal["avg", "max"] = "avg") -> tuple[Tensor, Tensor]:
    """``a`` and ``b`` with the larger pooled to the smaller's height and width (per dimension)."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return pool_to(a, size, mode), pool_to(b, size, mode)


def check_pairs(method: str, student_shapes: Sequence[Sequence[int]],
                teacher_shapes: Sequence[Sequence[int]], count: int | None = None) -> None:
    """One line naming ``method.params.*_layers`` when the taps do not pair up one to one (or are not
    exactly ``count`` each), or are not 4-D feature maps."""
    if len(student_shapes) != len(teacher_shapes):
        raise ConfigError(
            f"method.params.teacher_layers: {method} pairs student and teacher layers one to one, but got "
            f"{len(student_shapes)} student and {len(teacher_shapes)} teacher layers"
        )
    if count is not None and len(student_shapes) != count:
        raise ConfigError(f"method.params.student_layers: {method} takes exactly {count} student and "
                          f"{count} teacher layer(s), got {len(student_shapes)}")
    for role, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
        for shape in shapes:
            if len(shape) != 3:
                raise ConfigError(f"method.params.{role}_layers: {method} needs C x H x W feature maps, but "
                                  f"a {role} layer gives shape {tuple(shape)}")
