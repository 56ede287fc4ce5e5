"""MobileNetV2 for CIFAR (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018), as RepDistiller's ``mobile_half``: expansion 6, width multiplier 0.5.

Layout of the reference (``models/mobilenetv2.py``): a stride-2 conv-BN-ReLU stem ``conv1``, seven
groups ``blocks.0..blocks.6`` of inverted residuals (every block keeps its 1x1 expansion conv, also
for expansion 1), a 1x1 conv-BN-ReLU ``conv2`` to 1280 channels, global average pooling and
``classifier.0``. On 32x32 inputs the groups run at 16, 16, 8, 4, 4, 2 and 2 pixels; the stage ends
are the last group at each resolution. Blocks end in a linear bottleneck, so there is no
pre-activation preset.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.cifar.init import he_normal_init
from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset
from kdlab.models.registry import register_model

# (expansion or None for the model's expansion, output channels, blocks, first stride)
SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_shortcut else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 with expansion ``expansion`` and width multiplier ``width_mult``."""

    def __init__(
        self, expansion: int, width_mult: float, num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_channels, channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTINGS:
            out_channels = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t or expansion))
                channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(channels, last_channels, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        he_normal_init(self, "normal")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.avgpool(self.conv2(x)).flatten(1)
        return self.classifier(x)


@register_model(
    "mobilenetv2",
    family="cifar_mobilenetv2",
    preset=StagePreset(
        stages=tuple(TapPoint(f"blocks.{i}") for i in (1, 2, 4, 6)),
        stem=TapPoint("conv1"),
        classifier="classifier.0",
    ),
)
def mobilenetv2(num_classes: int = 100, in_channels: int = 3) -> CifarMobileNetV2:
    """MobileNetV2 with expansion 6 and width 0.5 (RepDistiller ``mobile_half``)."""
    return CifarMobileNetV2(6, 0.5, num_classes, in_channels)
