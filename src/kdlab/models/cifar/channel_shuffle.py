"""The channel shuffle of ShuffleNet (Zhang et al., CVPR 2018), shared by both ShuffleNet versions."""

from __future__ import annotations

from torch import Tensor, nn


class ChannelShuffle(nn.Module):
    """Reorders channels ``[g, C/g] -> [C/g, g]`` so grouped convolutions exchange information."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
