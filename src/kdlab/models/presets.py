"""Stage presets: where each model family's stages end, so feature methods need no layer names.

A preset names, by module path, the end of each stage (stage 1 has the highest resolution), the
pre-activation variant of those points when the family has one (RepDistiller's ``preact`` features:
the residual sum before the block's final ReLU), the penultimate embedding (the input of the
classifier) and the classifier itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.models.errors import ModelError
from kdlab.models.hooks import TapPoint


@dataclass(frozen=True)
class StagePreset:
    stages: tuple[TapPoint, ...]
    classifier: str
    preact_stages: tuple[TapPoint, ...] | None = None
    stem: TapPoint | None = None
    notes: str = field(default="", compare=False)

    @property
    def embedding(self) -> TapPoint:
        """The classifier's input: the pooled, flattened penultimate feature."""
        return TapPoint(self.classifier, "input")

    def stage_taps(self, preact: bool = False) -> tuple[TapPoint, ...]:
        if preact:
            if self.preact_stages is None:
                raise ModelError("this model family has no pre-activation stage preset")
            return self.preact_stages
        return self.stages
