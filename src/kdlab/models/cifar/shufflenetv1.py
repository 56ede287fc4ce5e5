"""ShuffleNet V1 for CIFAR (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", CVPR 2018), as RepDistiller's ``ShuffleV1``: 3 groups, stage widths
240/480/960 with 4/8/4 units, a 1x1 conv stem of 24 channels and no stem pooling.

As in the reference (``models/ShuffleNetv1.py``), the depthwise conv is followed by a ReLU, and a
stride-2 unit concatenates its branch with a 3x3 average-pooled shortcut. Each unit's final ReLU is
its own module ``relu_out``; its input is the pre-activation feature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models.cifar.shufflenet_shared import SHUFFLENET_PRESET, ChannelShuffle
from kdlab.models.registry import register_model


class ShuffleUnit(nn.Module):
    """Grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1; add (stride 1) or concat (stride 2).

    ``first_groups`` is the grouping of the first 1x1 conv (1 on the 24-channel stem output).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu_out = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        merged = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return self.relu_out(merged)


class CifarShuffleNetV1(nn.Module):
    """Stem 1x1 conv-BN-ReLU, three stages ``layer1..layer3`` (each starting with stride 2), ``linear``."""

    def __init__(
        self,
        widths: tuple[int, int, int],
        units: tuple[int, int, int],
        groups: int,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        planes = 24
        stages = []
        for width, count in zip(widths, units, strict=True):
            layers = [ShuffleUnit(planes, width - planes, 2, groups, 1 if planes == 24 else groups)]
            layers += [ShuffleUnit(width, width, 1, groups, groups) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


@register_model(
    "shufflenetv1",
    family="cifar_shufflenetv1",
    preset=SHUFFLENET_PRESET,
)
def shufflenetv1(num_classes: int = 100, in_channels: int = 3) -> CifarShuffleNetV1:
    """ShuffleNet V1, 3 groups (RepDistiller ``ShuffleV1``)."""
    return CifarShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, in_channels)
