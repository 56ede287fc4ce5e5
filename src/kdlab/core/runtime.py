"""Where and as which process a run executes: what the data and the engine need of the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Runtime:
    """The training device, this process's rank among ``world_size`` DDP processes, and the run's seed
    (the seed of every shuffle and augmentation draw)."""

    device: torch.device | str = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
