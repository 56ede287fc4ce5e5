"""Wide ResNets (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016) for CIFAR.

WRN-d-k as in RepDistiller's ``models/wrn.py``: a 16-channel stem conv, three stages ``block1..block3``
of ``(d - 4) / 6`` pre-activation blocks with widths 16k/32k/64k, then BN-ReLU, global average
pooling and ``fc``. Module paths keep the reference's names (``block1.layer.0.bn1``), so its
checkpoints load as they are. The pre-activation feature of a stage, as RepDistiller defines it, is
the stage output after the next BN: the input of the next stage's first ``relu1`` (or of the final
``relu`` for the last stage).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.cifar.init import he_normal_init
from kdlab.models.errors import ModelError
from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset
from kdlab.models.registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; a 1x1 conv shortcut on the activated input when the width changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.convShortcut = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out + shortcut


class WideStage(nn.Module):
    """``blocks`` pre-activation blocks; only the first changes width and stride."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            PreActBlock(in_planes, out_planes, stride),
            *(PreActBlock(out_planes, out_planes, 1) for _ in range(blocks - 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ModelError(f"WRN depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(blocks, widths[0], widths[1], 1)
        self.block2 = WideStage(blocks, widths[1], widths[2], 2)
        self.block3 = WideStage(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        he_normal_init(self, "zero_bias")

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.avgpool(x).flatten(1))


WRN_PRESET = StagePreset(
    stages=(TapPoint("block1"), TapPoint("block2"), TapPoint("block3")),
    preact_stages=(
        TapPoint("block2.layer.0.relu1", "input"),
        TapPoint("block3.layer.0.relu1", "input"),
        TapPoint("relu", "input"),
    ),
    stem=TapPoint("conv1"),
    classifier="fc",
)


@register_model("wrn_16_1", family="cifar_wrn", preset=WRN_PRESET)
def wrn_16_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-16-1."""
    return WideResNet(16, 1, num_classes, in_channels)


@register_model("wrn_16_2", family="cifar_wrn", preset=WRN_PRESET)
def wrn_16_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-16-2."""
    return WideResNet(16, 2, num_classes, in_channels)


@register_model("wrn_40_1", family="cifar_wrn", preset=WRN_PRESET)
def wrn_40_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-40-1."""
    return WideResNet(40, 1, num_classes, in_channels)


@register_model("wrn_40_2", family="cifar_wrn", preset=WRN_PRESET)
def wrn_40_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-40-2."""
    return WideResNet(40, 2, num_classes, in_channels)


@register_model("wrn_28_4", family="cifar_wrn", preset=WRN_PRESET)
def wrn_28_4(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-28-4 (the teachers and student of Nam et al., ICML 2022)."""
    return WideResNet(28, 4, num_classes, in_channels)


@register_model("wrn_28_10", family="cifar_wrn", preset=WRN_PRESET)
def wrn_28_10(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-28-10."""
    return WideResNet(28, 10, num_classes, in_channels)
