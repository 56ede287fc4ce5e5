"""VGG with batch norm for CIFAR (Simonyan & Zisserman, ICLR 2015; the BN variants of RepDistiller).

As in RepDistiller's ``models/vgg.py``: five conv blocks ``block0..block4`` of conv3x3-BN-ReLU units
with max-pooling between them, global average pooling and a single ``classifier`` Linear (no FC
stack). Like the reference, the pool after ``block3`` runs only for 64-pixel inputs, so 32x32
inputs give maps of 32, 16, 8, 4 and 4 pixels. Each block ends with its own ReLU module, so the
block's pre-activation feature is that module's input; the stage ends are the last block at each
resolution (``block0``, ``block1``, ``block2``, ``block4``).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.cifar.init import he_normal_init
from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset
from kdlab.models.registry import register_model

CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def conv_block(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """conv3x3 (with bias)-BN-ReLU for each width."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """VGG-``depth`` with BN; ``depth`` in 8, 11, 13, 16, 19."""

    def __init__(self, depth: int, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        cfg = CONFIGS[depth]
        self.block0 = conv_block(in_channels, cfg[0])
        self.block1 = conv_block(cfg[0][-1], cfg[1])
        self.block2 = conv_block(cfg[1][-1], cfg[2])
        self.block3 = conv_block(cfg[2][-1], cfg[3])
        self.block4 = conv_block(cfg[3][-1], cfg[4])
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        he_normal_init(self, "normal")

    def forward(self, x: Tensor) -> Tensor:
        pool3 = x.shape[2] == 64
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.block3(self.pool2(self.block2(x)))
        if pool3:
            x = self.pool3(x)
        x = self.block4(x)
        return self.classifier(self.pool4(x).flatten(1))


def _preset(depth: int) -> StagePreset:
    ends = (0, 1, 2, 4)
    last_relu = {b: 3 * len(CONFIGS[depth][b]) - 1 for b in ends}
    return StagePreset(
        stages=tuple(TapPoint(f"block{b}") for b in ends),
        preact_stages=tuple(TapPoint(f"block{b}.{last_relu[b]}", "input") for b in ends),
        stem=TapPoint("block0.2"),
        classifier="classifier",
    )


@register_model("vgg8", family="cifar_vgg", preset=_preset(8))
def vgg8(num_classes: int = 100, in_channels: int = 3) -> CifarVGG:
    """VGG-8 with BN (RepDistiller ``vgg8_bn``, configuration "S")."""
    return CifarVGG(8, num_classes, in_channels)


@register_model("vgg11", family="cifar_vgg", preset=_preset(11))
def vgg11(num_classes: int = 100, in_channels: int = 3) -> CifarVGG:
    """VGG-11 with BN (RepDistiller ``vgg11_bn``, configuration "A")."""
    return CifarVGG(11, num_classes, in_channels)


@register_model("vgg13", family="cifar_vgg", preset=_preset(13))
def vgg13(num_classes: int = 100, in_channels: int = 3) -> CifarVGG:
    """VGG-13 with BN (RepDistiller ``vgg13_bn``, configuration "B")."""
    return CifarVGG(13, num_classes, in_channels)


@register_model("vgg16", family="cifar_vgg", preset=_preset(16))
def vgg16(num_classes: int = 100, in_channels: int = 3) -> CifarVGG:
    """VGG-16 with BN (RepDistiller ``vgg16_bn``, configuration "D")."""
    return CifarVGG(16, num_classes, in_channels)


@register_model("vgg19", family="cifar_vgg", preset=_preset(19))
def vgg19(num_classes: int = 100, in_channels: int = 3) -> CifarVGG:
    """VGG-19 with BN (RepDistiller ``vgg19_bn``, configuration "E")."""
    return CifarVGG(19, num_classes, in_channels)
