"""ShuffleNet V2 1x for CIFAR (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018), as RepDistiller's ``ShuffleV2``: a 1x1 conv stem of 24 channels,
stages of 116/232/464 channels with 3/7/3 basic units after a downsampling unit, a 1x1 conv to 1024
channels, global average pooling and ``linear``.

As in the reference (``models/ShuffleNetv2.py``), the pre-activation feature of a basic unit is the
concatenation of the untouched half with the branch before its last ReLU, taken before the shuffle.
Here that concatenation is the input of the unit's own ``relu_out`` module: the untouched half is
always a ReLU output (non-negative), so applying the ReLU to the whole concatenation gives exactly
the reference's output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models.cifar.shufflenet_shared import SHUFFLENET_PRESET, ChannelShuffle
from kdlab.models.registry import register_model


class BasicUnit(nn.Module):
    """Channel split; 1x1 conv-BN-ReLU, depthwise 3x3 conv-BN, 1x1 conv-BN on one half; concat; ReLU;
    shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.relu_out = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        kept, branch = x.split(x.shape[1] // 2, dim=1)
        branch = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(branch)))))
        branch = self.bn3(self.conv3(branch))
        return self.shuffle(self.relu_out(torch.cat([kept, branch], 1)))


class DownUnit(nn.Module):
    """Two stride-2 branches (depthwise-then-pointwise, pointwise-depthwise-pointwise), concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu5 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(self.relu3(self.bn3(self.conv3(x)))))
        right = self.relu5(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class CifarShuffleNetV2(nn.Module):
    """Stem 1x1 conv-BN-ReLU, stages ``layer1..layer3``, 1x1 conv-BN-ReLU head, ``linear``."""

    def __init__(
        self,
        widths: tuple[int, int, int, int],
        units: tuple[int, int, int],
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        planes = 24
        stages = []
        for width, count in zip(widths[:3], units, strict=True):
            stages.append(nn.Sequential(DownUnit(planes, width), *(BasicUnit(width) for _ in range(count))))
            planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(widths[2], widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(self.avgpool(x).flatten(1))


@register_model(
    "shufflenetv2",
    family="cifar_shufflenetv2",
    preset=SHUFFLENET_PRESET,
)
def shufflenetv2(num_classes: int = 100, in_channels: int = 3) -> CifarShuffleNetV2:
    """ShuffleNet V2 1x (RepDistiller ``ShuffleV2``)."""
    return CifarShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes, in_channels)
