"""Domain-generalization datasets (DomainBed's PACS, VLCS, OfficeHome, TerraIncognita, DomainNet,
RotatedMNIST, ColoredMNIST): per-domain in/out splits and domain-balanced training batches.

They are registered in the ordinary dataset registry, so ``data.name: pacs`` with
``data.options.test_domains: [0]`` is a run on the other three domains, tested on the first; see
:mod:`kdlab.data.domains.build`.
"""

from __future__ import annotations

from functools import partial

from kdlab.data.catalog import DATASETS, DatasetSpec
from kdlab.data.domains.balanced import BalancedPlan, DomainBalancedSource
from kdlab.data.domains.build import build_domain_data, read_domains
from kdlab.data.domains.catalog import DOMAIN_SETS, DomainSet
from kdlab.data.domains.splits import split_domain

__all__ = [
    "DOMAIN_SETS",
    "BalancedPlan",
    "DomainBalancedSource",
    "DomainSet",
    "build_domain_data",
    "read_domains",
    "split_domain",
]


def _not_raw(name: str, *args: object, **kwargs: object) -> None:
    raise ValueError(f"{name} is a domain dataset: build it with build_data, not as one train/test pair")


for _name in DOMAIN_SETS.names():
    _spec = DOMAIN_SETS.get(_name)
    DATASETS.register(_name)(DatasetSpec(
        partial(_not_raw, _name), _spec.mean, _spec.std, augment_by_default=_spec.kind == "folder",
        bundle=partial(build_domain_data, _name),
    ))
