"""The domain-generalization datasets DomainBed defines (Gulrajani & Lopez-Paz, ICLR 2021), by name.

Each has a fixed, ordered list of domains (DomainBed's environment order: sorted folder names for the
image-folder datasets) with a short name, used to pick test domains, and, for the folder datasets,
the folder that holds it under ``ROOT/<folder>/`` (the layout DomainBed's download script produces).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.core.errors import ConfigError
from kdlab.core.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DomainSet:
    """A DG dataset: its domains (short names and folder names), where it lives, how it is read."""

    title: str
    kind: str  # "folder" (ROOT/<folder>/<domain>/<class>/<image>) or "mnist" (built from MNIST idx files)
    domains: tuple[str, ...]
    domain_folders: tuple[str, ...] = ()
    folder: str = ""
    num_classes: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    source: str = ""

    def domain_index(self, domain: int | str) -> int:
        """The position of a domain given by short name, folder name or index (names first: RotatedMNIST's
        domains are named by their angle, so ``"15"`` is the 15-degree domain and ``1`` is too)."""
        for names in (self.domains, self.domain_folders):
            if str(domain) in names:
                return names.index(str(domain))
        if str(domain).isdigit() and int(domain) < len(self.domains):
            return int(domain)
        raise ConfigError(f"data.options.test_domains: {self.title} has no domain {domain!r}; its domains: "
                          f"{', '.join(self.domains)} "
                          f"(or their indices 0..{len(self.domains) - 1})")


DOMAIN_SETS: Registry[DomainSet] = Registry("domain dataset")

_DOMAINBED = "DomainBed's downloader (python -m domainbed.scripts.download --data_dir ROOT)"

DOMAIN_SETS.register("pacs")(DomainSet(
    "PACS", "folder", ("A", "C", "P", "S"), ("art_painting", "cartoon", "photo", "sketch"), "PACS", 7,
    source=_DOMAINBED))
DOMAIN_SETS.register("vlcs")(DomainSet(
    "VLCS", "folder", ("C", "L", "S", "V"), ("Caltech101", "LabelMe", "SUN09", "VOC2007"), "VLCS", 5,
    source=_DOMAINBED))
DOMAIN_SETS.register("office_home")(DomainSet(
    "OfficeHome", "folder", ("A", "C", "P", "R"), ("Art", "Clipart", "Product", "Real World"), "office_home",
    65, source=_DOMAINBED))
DOMAIN_SETS.register("terra_incognita")(DomainSet(
    "TerraIncognita", "folder", ("L100", "L38", "L43", "L46"),
    ("location_100", "location_38", "location_43", "location_46"), "terra_incognita", 10, source=_DOMAINBED))
DOMAIN_SETS.register("domain_net")(DomainSet(
    "DomainNet", "folder", ("clip", "info", "paint", "quick", "real", "sketch"),
    ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), "domain_net", 345,
    source=_DOMAINBED))
DOMAIN_SETS.register("rotated_mnist")(DomainSet(
    "RotatedMNIST", "mnist", ("0", "15", "30", "45", "60", "75"), num_classes=10, mean=(0.0,), std=(1.0,)))
DOMAIN_SETS.register("colored_mnist")(DomainSet(
    "ColoredMNIST", "mnist", ("+90%", "+80%", "-90%"), num_classes=2, mean=(0.0, 0.0), std=(1.0, 1.0)))
