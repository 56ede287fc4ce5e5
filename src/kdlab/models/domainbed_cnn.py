"""DomainBed's hand-tuned MNIST network (Gulrajani & Lopez-Paz, 2021, "In Search of Lost Domain
Generalization"; ``MNIST_CNN`` in facebookresearch/DomainBed ``domainbed/networks.py``) and a narrower
student of the same shape, for RotatedMNIST and ColoredMNIST.

Four 3x3 convolutions (the second with stride 2), each followed by ReLU and then GroupNorm with 8
groups (DomainBed's order: conv -> ReLU -> norm), a global average pool and a linear classifier (the
``Classifier`` DomainBed's ERM puts on top of the featurizer). ``mnist_cnn`` has widths 64-128-128-128
(DomainBed's); ``mnist_cnn_small`` has 32-64-64-64 (about a quarter of the compute and parameters).
There is no BatchNorm, so batch statistics and BN freezing do not apply.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset
from kdlab.models.registry import register_model

GROUPS = 8


class DomainBedCNN(nn.Module):
    """``conv1..conv4`` with GroupNorms ``bn0..bn3`` (DomainBed's names), mean pool, then ``fc``."""

    def __init__(self, widths: tuple[int, int, int, int], num_classes: int = 10,
                 in_channels: int = 1) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.conv1 = nn.Conv2d(in_channels, w1, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(w2, w3, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(w3, w4, 3, 1, padding=1)
        self.bn0 = nn.GroupNorm(GROUPS, w1)
        self.bn1 = nn.GroupNorm(GROUPS, w2)
        self.bn2 = nn.GroupNorm(GROUPS, w3)
        self.bn3 = nn.GroupNorm(GROUPS, w4)
        self.fc = nn.Linear(w4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn0(F.relu(self.conv1(x)))
        x = self.bn1(F.relu(self.conv2(x)))
        x = self.bn2(F.relu(self.conv3(x)))
        x = self.bn3(F.relu(self.conv4(x)))
        return self.fc(x.mean(dim=(2, 3)))


PRESET = StagePreset(
    stages=tuple(TapPoint(f"bn{i}") for i in range(4)),
    classifier="fc",
    notes="stage i ends at GroupNorm bn{i-1}; stage 1 is the only full-resolution one",
)


@register_model("mnist_cnn", family="domainbed_cnn", preset=PRESET)
def mnist_cnn(num_classes: int = 10, in_channels: int = 1) -> DomainBedCNN:
    """DomainBed's ``MNIST_CNN`` plus a linear head: widths 64-128-128-128 (about 0.37M parameters)."""
    return DomainBedCNN((64, 128, 128, 128), num_classes, in_channels)


@register_model("mnist_cnn_small", family="domainbed_cnn", preset=PRESET)
def mnist_cnn_small(num_classes: int = 10, in_channels: int = 1) -> DomainBedCNN:
    """The student variant: widths 32-64-64-64 (about 0.09M parameters)."""
    return DomainBedCNN((32, 64, 64, 64), num_classes, in_channels)
