"""Composed methods: the loss terms of several methods summed, each part with its own parameters and
weights, as papers and benchmarks combine them (CRD+KD, FitNet+KD, a feature method + KD, DKD + AT):

    L = sum over parts p, over terms k of p:   w_{p,k} * L_{p,k}

The config names the parts under ``method.params.parts`` (``method.name: composed``); each part is an
ordinary method section (``name``, ``params``, ``weights``) with an optional ``label`` (default: its
name; two parts need two labels). A term keeps its own name unless two parts have a term of that name;
then each is ``<label>.<term>`` (``kd.ce`` and ``crd.ce``). ``method.weights`` and ``stages[i].weights``
use these names; ``stages[i].params`` maps a part's label to that part's stage settings.

Every step runs the student once and the teacher once: each part's forward hooks are registered on the
shared models when it is built, and the parts read the one forward's logits and tapped features
(:class:`~kdlab.methods.base.SharedForward`). Only methods that run the models on the batch's own
inputs and plan no stages of their own can be parts (``Distiller.composable``). The student belongs to
the composed method (the parts hold their own trainable modules, saved under ``parts.<label>.``).
A teacher cache can stand in for the teacher when every part replays logits and at most one part also
reads teacher features.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from kdlab.config.schema import MethodConfig
from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, Distiller, DistillOutput, SharedForward, StepContext
from kdlab.methods.registry import METHODS, register_method, resolve_method
from kdlab.models.hooks import FeatureTaps


class PartConfig(MethodConfig):
    """One part: a method section, and the label its clashing terms and stage settings go by."""

    label: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                              description="default: the method's name")

    @property
    def key(self) -> str:
        return self.label or self.name

    @model_validator(mode="after")
    def _smoothing_is_the_methods(self) -> PartConfig:
        if "label_smoothing" in self.model_fields_set:
            raise ValueError("label_smoothing applies to every part's CE term: set method.label_smoothing, "
                             "not a part's")
        return self


class ComposedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parts: list[PartConfig] = Field(..., min_length=2, description="the methods whose terms are summed")

    @model_validator(mode="after")
    def _distinct_labels(self) -> ComposedParams:
        seen: set[str] = set()
        for i, part in enumerate(self.parts):
            if part.key in seen:
                raise ValueError(f"parts.{i}: a second part labelled {part.key!r}; give it another 'label'")
            seen.add(part.key)
        return self


def namespaced(groups: Mapping[str, Iterable[str]]) -> dict[str, dict[str, str]]:
    """For each group label, its names in the composed method: the name itself, or ``<label>.<name>``
    when another group has a name of that name (loss terms of parts, their diagnostics)."""
    groups = {label: list(names) for label, names in groups.items()}
    counts = Counter(name for names in groups.values() for name in names)
    return {label: {name: name if counts[name] == 1 else f"{label}.{name}" for name in names}
            for label, names in groups.items()}


def resolve_parts(params: ComposedParams) -> dict[str, tuple[type[Distiller], BaseModel, dict[str, float]]]:
    """Each part's method, validated parameters and weights, by label; a part that cannot be composed,
    or any mistake in one, is one ``ConfigError`` naming ``method.params.parts.<i>``."""
    resolved = {}
    for i, part in enumerate(params.parts):
        key = f"method.params.parts.{i}"
        method, part_params, weights = resolve_method(part, key=key)
        if not method.composable:
            composable = sorted(n for n in METHODS.names() if METHODS.get(n).composable)
            raise ConfigError(f"{key}.name: method {part.name!r} cannot be a part of a composed method (it "
                              f"runs its models on other inputs or plans its own stages); parts can be: "
                              f"{', '.join(composable)}")
        resolved[part.key] = (method, part_params, weights)
    return resolved


def part_term_names(resolved: Mapping[str, tuple[type[Distiller], BaseModel, dict[str, float]]]
                    ) -> dict[str, dict[str, str]]:
    """For each part label, its terms' names in the composed method (see :func:`namespaced`)."""
    return namespaced({label: weights for label, (_, _, weights) in resolved.items()})


@register_method("composed")
class Composed(Distiller):
    """The sum of several methods' weighted terms, with one student and one teacher forward per step."""

    Params = ComposedParams
    needs_teacher = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: ComposedParams,
                 context: DistillContext, **norms: Any) -> None:
        super().__init__(student, teacher, params, context, **norms)
        resolved = resolve_parts(params)
        self.names = part_term_names(resolved)
        weights = self.weights
        parts = {}
        for label, (method, part_params, _) in resolved.items():
            own = {term: weights[name] for term, name in self.names[label].items()}
            parts[label] = method(student, teacher, part_params, context, owns_student=False, weights=own,
                                  **{k: v for k, v in norms.items() if k != "weights"})
        self.parts = nn.ModuleDict(parts)

    @classmethod
    def term_defaults(cls, params: ComposedParams) -> dict[str, float]:
        resolved = resolve_parts(params)
        names = part_term_names(resolved)
        return {names[label][term]: weight for label, (_, _, weights) in resolved.items()
                for term, weight in weights.items()}

    def stage_params(self, raw: dict[str, Any], key: str) -> ComposedStageParams:
        """``{label: that part's stage settings}``; a part without an entry gets its defaults."""
        unknown = sorted(set(raw) - set(self.parts))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: no part has that label; parts: {', '.join(self.parts)}")
        return ComposedStageParams.model_construct(
            parts={label: part.stage_params(raw.get(label, {}), f"{key}.{label}")
                   for label, part in self.parts.items()})

    @property
    def teacher_cache(self) -> str:
        """``logits`` when every part replays logits; ``features`` when one part also reads teacher
        features; otherwise ``none``."""
        kinds = [part.teacher_cache for part in self.parts.values()]
        if all(kind == "logits" for kind in kinds):
            return "logits"
        if kinds.count("features") == 1 and set(kinds) <= {"logits", "features"}:
            return "features"
        return "none"

    @property
    def soft_targets(self) -> bool:
        """Whether every part reads the labels only through ``label_loss``."""
        return all(part.soft_targets for part in self.parts.values())

    @property
    def keys_samples(self) -> bool:
        """Whether a part keeps state per training sample."""
        return any(part.keys_samples for part in self.parts.values())

    def teacher_feature_taps(self) -> tuple[FeatureTaps, list[torch.Size]] | None:
        readers = [part for part in self.parts.values() if part.teacher_cache == "features"]
        return readers[0].teacher_feature_taps() if len(readers) == 1 else None

    def _part_step(self, label: str, step: StepContext) -> StepContext:
        stage = replace(step.stage, params=step.stage.params.parts[label])
        return replace(step, stage=stage,
                       weights={term: step.weights[name] for term, name in self.names[label].items()})

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        shared = SharedForward()
        losses = {}
        logits = None
        for label, part in self.parts.items():
            with part.sharing(shared):
                out = part.distill(batch, self._part_step(label, step))
            losses.update({self.names[label][term]: value for term, value in out.losses.items()})
            logits = out.logits if logits is None else logits
        return DistillOutput(losses, logits)

    def diagnostics(self) -> dict[str, float]:
        reports = {label: part.diagnostics() for label, part in self.parts.items()}
        names = namespaced(reports)
        return {names[label][name]: value for label, report in reports.items()
                for name, value in report.items()}


class ComposedStageParams(BaseModel):
    """The stage settings of a composed method: each part's validated ``StageParams``, by label."""

    parts: dict[str, BaseModel] = Field(default_factory=dict)
