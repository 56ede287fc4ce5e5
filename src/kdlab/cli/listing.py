"""What ``kdlab list`` prints: one line per method, zoo model and dataset, with a short description."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from kdlab.data.catalog import DATASETS
from kdlab.data.domains.catalog import DOMAIN_SETS
from kdlab.methods import METHODS
from kdlab.models.registry import MODELS, build_model

#: the classifier width the parameter counts of ``kdlab list models`` assume
LISTED_CLASSES = 100


def summary_line(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring on one line, without reST markup, or ''."""
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "")


def parameter_count(name: str) -> int:
    """Parameters of zoo model ``name`` with a ``LISTED_CLASSES``-way head, built on the meta device."""
    with torch.device("meta"):
        model = build_model(name, LISTED_CLASSES)
    return sum(p.numel() for p in model.parameters())


def method_lines() -> list[str]:
    return [f"{name:<18} {summary_line(METHODS.get(name))}" for name in METHODS.names()]


def model_lines() -> list[str]:
    lines = []
    for name in MODELS.names():
        millions = parameter_count(name) / 1e6
        lines.append(f"{name:<18} {MODELS.get(name).family:<20} {millions:7.2f}M params")
    lines.append(f"{'torchvision:<name>':<18} any torchvision classification model, its head resized")
    lines.append(f"{'timm:<name>':<18} any timm model (needs timm), its head resized")
    lines.append(f"(parameter counts with a {LISTED_CLASSES}-way classifier)")
    return lines


def dataset_lines() -> list[str]:
    lines = []
    for name in DATASETS.names():
        if name in DOMAIN_SETS:
            domains = DOMAIN_SETS.get(name)
            text = f"{domains.title} domain-generalization set, domains {', '.join(domains.domains)}"
        else:
            text = summary_line(DATASETS.get(name).load)
        lines.append(f"{name:<18} {text}")
    return lines


LISTINGS = {"methods": method_lines, "models": model_lines, "datasets": dataset_lines}


def listing(what: str) -> str:
    """The text of ``kdlab list WHAT``."""
    return "\n".join(LISTINGS[what]())
