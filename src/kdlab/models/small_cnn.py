"""Small LeNet-style CNNs (LeCun et al., 1998) for 8x8 scikit-learn digits and 28x28 MNIST.

Three stages of conv3x3-BN-ReLU units; stages 2 and 3 start with a 2x2 max-pool, so 8x8 inputs give
8/4/2-pixel maps and 28x28 inputs 28/14/7. Adaptive average pooling makes any input of at least 4x4
work. ``cnn_small`` is teacher-sized (about 0.29M parameters), ``cnn_tiny`` student-sized (about 6K).
``batchnorm=False`` replaces every BN by an identity (and gives the convs a bias), for tests where
batch statistics must not depend on how a batch is split across processes.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset
from kdlab.models.registry import register_model


def conv_unit(in_channels: int, out_channels: int, batchnorm: bool) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batchnorm),
            bn=nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity(),
            relu=nn.ReLU(),
        )
    )


class SmallCNN(nn.Module):
    """Stages ``stage1..stage3`` of ``units`` conv units each, widths ``widths``; then ``fc``."""

    def __init__(
        self,
        widths: tuple[int, int, int],
        units: int,
        num_classes: int = 10,
        in_channels: int = 1,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        channels = in_channels
        stages = []
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i else []
            for _ in range(units):
                layers.append(conv_unit(channels, width, batchnorm))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stage1, self.stage2, self.stage3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _preset(units: int) -> StagePreset:
    last = {1: units - 1, 2: units, 3: units}  # stages 2 and 3 start with their max-pool
    return StagePreset(
        stages=tuple(TapPoint(f"stage{i}") for i in (1, 2, 3)),
        preact_stages=tuple(TapPoint(f"stage{i}.{last[i]}.relu", "input") for i in (1, 2, 3)),
        classifier="fc",
    )


@register_model("cnn_small", family="small_cnn", preset=_preset(2))
def cnn_small(num_classes: int = 10, in_channels: int = 1, batchnorm: bool = True) -> SmallCNN:
    """Teacher-sized: widths 32/64/128, two conv units per stage."""
    return SmallCNN((32, 64, 128), 2, num_classes, in_channels, batchnorm)


@register_model("cnn_tiny", family="small_cnn", preset=_preset(1))
def cnn_tiny(num_classes: int = 10, in_channels: int = 1, batchnorm: bool = True) -> SmallCNN:
    """Student-sized: widths 8/16/32, one conv unit per stage."""
    return SmallCNN((8, 16, 32), 1, num_classes, in_channels, batchnorm)
