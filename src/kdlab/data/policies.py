"""Per-sample augmentation policies of ``torchvision.transforms.v2`` on uint8 C x H x W images:
RandAugment (Cubuk et al., 2020), TrivialAugmentWide (Müller & Hutter, 2021), AutoAugment (Cubuk et
al., 2019) and random erasing (Zhong et al., 2020), after the dataset's crop/flip.

Called on a batch, a v2 policy draws its operations once for the whole batch. These policies are meant
per image (timm and torchvision's reference recipes apply them per sample in DataLoader workers), so
both data paths apply them image by image, each image under its own seed: the DataLoader path inside
the per-sample transform of its workers, the device-resident path with :func:`apply_per_sample` on the
device. v2 draws every random choice of these transforms from the CPU generator, so a seed fixes the
whole draw: resume is exact and a teacher cache replays a policy from one recorded number per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2

from kdlab.config.schema import ErasingConfig, PolicyConfig
from kdlab.data.transforms import Transform

#: per-image seeds are drawn below this bound, so that a teacher cache stores them as int32
SEED_RANGE = 2**31
AUTOAUGMENT_POLICIES = {"imagenet": v2.AutoAugmentPolicy.IMAGENET, "cifar10": v2.AutoAugmentPolicy.CIFAR10,
                        "svhn": v2.AutoAugmentPolicy.SVHN}


def policy_transform(config: PolicyConfig) -> Transform:
    """The v2 transform of ``data.policy``."""
    if config.name == "randaugment":
        return v2.RandAugment(num_ops=config.setting("num_ops"), magnitude=config.setting("magnitude"),
                              num_magnitude_bins=config.setting("num_magnitude_bins"))
    if config.name == "trivialaugment":
        return v2.TrivialAugmentWide(num_magnitude_bins=config.setting("num_magnitude_bins"))
    return v2.AutoAugment(AUTOAUGMENT_POLICIES[config.setting("autoaugment_policy")])


def erasing_transform(config: ErasingConfig, mean: Sequence[float]) -> Transform:
    """``RandomErasing`` of ``data.random_erasing``, filling with the normalization ``mean`` as uint8 (the
    erased pixels normalize to about 0, as erasing after normalization with value 0 does)."""
    return v2.RandomErasing(p=config.p, scale=config.scale, ratio=config.ratio,
                            value=[round(255 * m) for m in mean])


def sample_transform(policy: PolicyConfig | None, erasing: ErasingConfig | None,
                     mean: Sequence[float]) -> Transform | None:
    """The per-sample policy, then random erasing; None when neither is set."""
    steps = [*([policy_transform(policy)] if policy is not None else []),
             *([erasing_transform(erasing, mean)] if erasing is not None else [])]
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else v2.Compose(steps)


def then(first: Transform | None, second: Transform | None) -> Transform | None:
    """``first`` followed by ``second``; either may be None."""
    if first is None or second is None:
        return first if second is None else second
    return v2.Compose([first, second])


def draw_seeds(count: int, generator: torch.Generator) -> Tensor:
    """``count`` per-image seeds, int32, from ``generator``."""
    return torch.randint(0, SEED_RANGE, (count,), generator=generator, dtype=torch.int32)


def apply_per_sample(transform: Transform, images: Tensor, seeds: Sequence[int]) -> Tensor:
    """``transform`` applied to each image of a B x C x H x W batch under its own seed, on the images'
    device; the global CPU generator is left as it was."""
    out = torch.empty_like(images)
    with torch.random.fork_rng(devices=[]):
        for i, seed in enumerate(seeds):
            torch.default_generator.manual_seed(seed)
            out[i] = transform(images[i])
    return out
