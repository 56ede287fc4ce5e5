"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2).

Three stages of basic blocks at 32x32, 16x16 and 8x8 with ``(depth - 2) / 6`` blocks each, as in
RepDistiller's ``models/resnet.py``: ``resnet8`` .. ``resnet110`` have stage widths 16/32/64 after a
16-channel stem; the ``x4`` variants (``resnet8x4``, ``resnet32x4``) have a 32-channel stem and
stages of 64/128/256. Each block's final ReLU is its own module ``relu_out``, so the pre-activation
feature (the residual sum) is that module's input.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.cifar.init import he_normal_init
from kdlab.models.errors import ModelError
from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset
from kdlab.models.registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (1x1 conv-BN projection when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.relu_out = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + shortcut)


class CifarResNet(nn.Module):
    """Stem conv-BN-ReLU, three stages ``layer1..layer3``, global average pooling and ``fc``."""

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._stage(widths[0], widths[1], blocks, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], blocks, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        he_normal_init(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _preset(depth: int) -> StagePreset:
    last = (depth - 2) // 6 - 1
    return StagePreset(
        stages=tuple(TapPoint(f"layer{i}") for i in (1, 2, 3)),
        preact_stages=tuple(TapPoint(f"layer{i}.{last}.relu_out", "input") for i in (1, 2, 3)),
        stem=TapPoint("relu"),
        classifier="fc",
    )


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model("resnet8", family="cifar_resnet", preset=_preset(8))
def resnet8(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-8, widths 16/16/32/64."""
    return CifarResNet(8, _NARROW, num_classes, in_channels)


@register_model("resnet14", family="cifar_resnet", preset=_preset(14))
def resnet14(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-14, widths 16/16/32/64."""
    return CifarResNet(14, _NARROW, num_classes, in_channels)


@register_model("resnet20", family="cifar_resnet", preset=_preset(20))
def resnet20(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-20, widths 16/16/32/64."""
    return CifarResNet(20, _NARROW, num_classes, in_channels)


@register_model("resnet32", family="cifar_resnet", preset=_preset(32))
def resnet32(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-32, widths 16/16/32/64."""
    return CifarResNet(32, _NARROW, num_classes, in_channels)


@register_model("resnet44", family="cifar_resnet", preset=_preset(44))
def resnet44(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-44, widths 16/16/32/64."""
    return CifarResNet(44, _NARROW, num_classes, in_channels)


@register_model("resnet56", family="cifar_resnet", preset=_preset(56))
def resnet56(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-56, widths 16/16/32/64."""
    return CifarResNet(56, _NARROW, num_classes, in_channels)


@register_model("resnet110", family="cifar_resnet", preset=_preset(110))
def resnet110(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-110, widths 16/16/32/64."""
    return CifarResNet(110, _NARROW, num_classes, in_channels)


@register_model("resnet8x4", family="cifar_resnet", preset=_preset(8))
def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-8 with four times the width: 32/64/128/256."""
    return CifarResNet(8, _WIDE, num_classes, in_channels)


@register_model("resnet32x4", family="cifar_resnet", preset=_preset(32))
def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 with four times the width: 32/64/128/256."""
    return CifarResNet(32, _WIDE, num_classes, in_channels)
