"""The diversifying input perturbation as a method option (``method.params.perturb``).

Shared by the ensemble-distillation methods (``ensemble_kd``, ``batchensemble_kd``); the formulas are
in :mod:`kdlab.ensemble.perturb`. Defaults are the reference's (Nam et al., ICML 2022,
``train_KD_LatentBE_TDivSDiv.py``): objective TDiv - SDiv, one step of per-pixel RMS 1/255, clipped to
the valid pixel range, and the perturbed batch *replaces* the clean one for the distillation step.
``mode: append`` keeps the clean batch and adds the perturbed copy (twice the batch), an option of
ours. ``objective: ods`` is the ODS-style variant. The pair (i, j) and the ODS weights are drawn from
the global torch RNG, which checkpoints save, so resume stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdlab.core.errors import ConfigError
from kdlab.ensemble import PixelRange, divergence_objective, ods_objective, perturb

MemberFn = Callable[[Tensor], Tensor]


class PerturbParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    objective: Literal["none", "tdiv_sdiv", "ods"] = Field(
        "none", description="none (off), tdiv_sdiv (the paper's), or ods (random logit direction)")
    step_size: float = Field(1 / 255, ge=0, description="per-pixel RMS of a step, in [0,1] pixel units")
    steps: int = Field(1, ge=1)
    mode: Literal["replace", "append"] = "replace"
    clamp: bool = Field(True, description="clip perturbed inputs to the valid pixel range [0, 1]")


class InputPerturber:
    """Applies :class:`PerturbParams` to a batch, given the teachers' and the student's member logits."""

    def __init__(self, params: PerturbParams, teachers: int,
                 norm: tuple[Sequence[float], Sequence[float]] | None, channels: int) -> None:
        if params.objective == "tdiv_sdiv" and teachers < 2:
            raise ConfigError("method.params.perturb.objective: tdiv_sdiv needs at least 2 teachers "
                              f"(a 'teachers' list); got {teachers}")
        self.params = params
        self.teachers = teachers
        mean, std = norm if norm is not None else ([0.0] * channels, [1.0] * channels)
        self.pixels = PixelRange(mean, std)

    @property
    def enabled(self) -> bool:
        return self.params.objective != "none"

    def objective(self, inputs: Tensor, teacher: MemberFn, student: MemberFn | None) -> MemberFn:
        """The scalar function of the inputs to ascend, with this step's random draws fixed."""
        if self.params.objective == "tdiv_sdiv":
            i, j = torch.randperm(self.teachers)[:2].tolist()
            return lambda x: divergence_objective(teacher(x), None if student is None else student(x), (i, j))
        member = int(torch.randint(self.teachers, ()))
        weights: Tensor | None = None

        def ods(x: Tensor) -> Tensor:
            nonlocal weights
            logits = teacher(x)
            if weights is None:
                weights = torch.rand(logits.shape[1:], device=x.device) * 2 - 1
            return ods_objective(logits, member, weights)

        return ods

    def __call__(self, inputs: Tensor, targets: Tensor, teacher: MemberFn,
                 student: MemberFn | None) -> tuple[Tensor, Tensor]:
        """The distillation batch: perturbed inputs (``replace``) or clean + perturbed (``append``)."""
        if not self.enabled:
            return inputs, targets
        p = self.params
        moved = perturb(inputs, self.objective(inputs, teacher, student), step_size=p.step_size,
                        steps=p.steps, pixels=self.pixels, clamp=p.clamp)
        if p.mode == "replace":
            return moved, targets
        return torch.cat([inputs, moved]), torch.cat([targets, targets])
