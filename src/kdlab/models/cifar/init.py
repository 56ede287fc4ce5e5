"""The weight initialization of RepDistiller's CIFAR models, which differ only in their linear layers."""

from __future__ import annotations

import math
from typing import Literal

from torch import nn


def he_normal_init(model: nn.Module, linear: Literal["default", "zero_bias", "normal"] = "default") -> None:
    """Initialize ``model`` in place, module by module in registration order.

    - ``Conv2d``: weight ~ N(0, 2 / fan_out), fan_out = k_h * k_w * out_channels (He et al., ICCV 2015,
      fan-out mode); bias 0.
    - ``BatchNorm2d``: weight 1, bias 0.
    - ``Linear``: PyTorch's default (``default``: the ResNets), PyTorch's default weight with bias 0
      (``zero_bias``: WRN), or weight ~ N(0, 0.01^2) with bias 0 (``normal``: VGG and MobileNetV2).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
