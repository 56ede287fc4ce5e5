"""Hyper-parameter search as a study axis, after DomainBed's ``hparams_registry``: every searched
hyper-parameter has a default and a distribution, and draw ``k`` of a method is a pure function of
(search seed, method label, ``k``). Draw 0 is the defaults (the method entry's own values where a
hyper-parameter gives no ``default``); draws 1..n-1 are random. Selection (``kdlab report``) picks, per
grid cell, the draw with the best validation accuracy; test figures never enter it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from kdlab.config.schema import Section


class HParamSpace(Section):
    """One searched hyper-parameter: ``log_uniform`` / ``uniform`` on [low, high], ``int_uniform`` on the
    integers low..high, or ``choice`` among ``values``; ``default`` is draw 0's value."""

    distribution: Literal["log_uniform", "uniform", "int_uniform", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = Field(None, min_length=1)
    default: Any = Field(None, description="draw 0's value; none: the method entry's own value")

    @model_validator(mode="after")
    def _bounds(self) -> HParamSpace:
        if self.distribution == "choice":
            if self.values is None:
                raise ValueError("distribution choice needs 'values'")
            return self
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError(f"distribution {self.distribution} needs low <= high (got low {self.low}, "
                             f"high {self.high})")
        if self.distribution == "log_uniform" and self.low <= 0:
            raise ValueError(f"distribution log_uniform needs low > 0 (got {self.low})")
        return self

    def sample(self, rng: random.Random) -> Any:
        if self.distribution == "choice":
            return rng.choice(self.values)
        low, high = float(self.low), float(self.high)
        if self.distribution == "int_uniform":
            return rng.randint(math.ceil(low), math.floor(high))
        if self.distribution == "log_uniform":
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        return float(f"{value:.6g}")


class SearchConfig(Section):
    """The study file's ``search`` section: how many draws each searched method gets per grid cell."""

    draws: int = Field(1, ge=1, description="draws per grid cell of every method with a 'search' space "
                                            "(draw 0: the defaults)")
    seed: int = Field(0, description="seed of the draws (each method's draws also depend on its label)")


def draw(space: Mapping[str, HParamSpace], seed: int, label: str, index: int) -> dict[str, Any]:
    """The dotted-key values of draw ``index`` of the method labelled ``label``: a pure function of its
    arguments (Python's ``random`` seeded with a string is the same on every machine and process)."""
    if index == 0:
        return {key: spec.default for key, spec in sorted(space.items()) if spec.default is not None}
    rng = random.Random(f"kdlab-search:{seed}:{label}:{index}")
    return {key: spec.sample(rng) for key, spec in sorted(space.items())}
