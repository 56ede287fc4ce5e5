"""What both ShuffleNet versions share: the channel shuffle (Zhang et al., CVPR 2018) and the stage preset."""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.hooks import TapPoint
from kdlab.models.presets import StagePreset

#: Both have 4, 8 and 4 units in ``layer1..layer3`` (V2: a down-sampling unit, then 3, 7 and 3); a
#: stage's pre-activation feature is the input of its last unit's final ReLU.
SHUFFLENET_PRESET = StagePreset(
    stages=(TapPoint("layer1"), TapPoint("layer2"), TapPoint("layer3")),
    preact_stages=(
        TapPoint("layer1.3.relu_out", "input"),
        TapPoint("layer2.7.relu_out", "input"),
        TapPoint("layer3.3.relu_out", "input"),
    ),
    stem=TapPoint("relu"),
    classifier="linear",
)


class ChannelShuffle(nn.Module):
    """Reorders channels ``[g, C/g] -> [C/g, g]`` so grouped convolutions exchange information."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
