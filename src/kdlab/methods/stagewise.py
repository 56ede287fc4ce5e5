"""Stage-by-stage knowledge distillation (Gao, Shen, Li, Yan, Wan, Lin, Loy & Tang, arXiv 1812.01819,
"An Embarrassingly Simple Approach for Knowledge Distillation"; v1: "Feature Matters: A Stage-by-Stage
Approach for Knowledge Transfer").

Not to be confused with the other "SSKD"s: Xu et al., ECCV 2020 ("Knowledge Distillation Meets
Self-Supervision", the SSKD row of CIFAR-100 tables since 2020), or Lee et al., ECCV 2018 (KD with
SVD, KDSVD). Hence the registry name ``stagewise``, never ``sskd``.

The student's backbone is split into the K stages of its stage preset (or of ``student_layers``), the
teacher's likewise. Stage k is trained alone to reproduce the teacher's stage-k output, with stages
1..k-1 frozen (their BatchNorm in eval mode) and stages after k unused:

    L_k = mean over elements of ( a_k(F_S^k(x)) - F_T^k(x) )^2          (reduction "mean", default)

(``reduction: sum``: the per-sample squared L2 distance, averaged over the batch.) ``a_k`` is the
identity when the two maps have the same shape; otherwise (or with ``adapter: always``) it is a
:class:`~kdlab.methods.connectors.ConvRegressor` (1x1 conv + BN, or a strided / transposed conv when the
resolutions differ by 2x) trained with stage k and unused afterwards. Then the backbone is frozen and
only the task head is trained, with the ground-truth cross-entropy and no distillation term.

The plan is a list of engine stages (:meth:`Stagewise.default_stages`): ``stage1`` .. ``stageK``
(``train_only``: the student modules that run between the previous stage end and this one, plus
``adapters.{k-1}``; weights ``{mimic: 1, ce: 0}``) and ``head`` (``train_only``: the modules after the
last stage end: any neck, e.g. WRN's final BN or ShuffleNetV2's 1x1 conv, and the classifier; weights
``{mimic: 0, ce: 1}``). The run's budget (``train.epochs`` or ``train.steps``, the same total as any other
method's config) is split: ``head_share`` of it to the head, the rest over the stages by
``stage_shares`` (equal by default). Each stage restarts the top-level schedule. ``mode: joint`` replaces
the K stages by one ``backbone`` stage that trains all stages on ``sum_k L_k`` (the all-at-once
ablation). An explicit ``stages:`` list in the config replaces the plan; a stage with
``params: {mimic_stage: k}`` then mimics stage k alone, any other stage uses the weighted ``mimic``
(summed over all stages) and ``ce``. The default plan's ``stage<k>`` stages carry ``mimic_stage: k``.

In a ``mimic_stage: k`` stage, student and teacher forwards stop once stage k's output is reached: later
layers are not run. What the paper does not fix (we could read only its abstract and secondary notes)
and is chosen here: post-activation stage outputs (``preact: true`` for the presets' pre-activation
points), the mean reduction, adapters only where shapes differ, no joint fine-tune after the last
stage, and the neck trained with the head.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from kdlab.config.schema import RunConfig, StageConfig
from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, DistillOutput, StepContext
from kdlab.methods.connectors import ConvRegressor, align_spatial, check_pairs
from kdlab.methods.features import FeatureDistiller, FeatureParams
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint
from kdlab.models.errors import ModelError
from kdlab.models.hooks import find_module
from kdlab.models.partition import segment_paths


def mimic_loss(student: Tensor, teacher: Tensor, reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """Squared error between two maps of one shape: element mean, or per-sample sum then batch mean."""
    diff = student.float() - teacher.float()
    if reduction == "mean":
        return diff.pow(2).mean()
    return diff.pow(2).flatten(1).sum(1).mean()


class _Reached(Exception):  # noqa: N818  (control flow, not an error)
    def __init__(self, feature: Tensor) -> None:
        super().__init__()
        self.feature = feature


def forward_until(model: nn.Module, tap: TapPoint, inputs: Tensor) -> Tensor:
    """The feature at ``tap`` of ``model(inputs)``, stopping the forward as soon as it is computed.

    Runs ``model.forward`` itself, eagerly: under ``train.compile`` the compiled call would be traced
    again for every added and removed hook (and give up at dynamo's recompile limit)."""
    module = find_module(model, tap.path)

    def stop(_module: nn.Module, args: tuple, output: Tensor | None = None) -> None:
        raise _Reached(args[0] if tap.kind == "input" else output)

    if tap.kind == "input":
        handle = module.register_forward_pre_hook(stop)
    else:
        handle = module.register_forward_hook(stop)
    try:
        model.forward(inputs)
    except _Reached as reached:
        return reached.feature
    finally:
        handle.remove()
    raise RuntimeError(f"tap point {tap.path!r} was not reached by the forward")


def split_budget(total: int, head_share: float, stage_shares: list[float]) -> tuple[list[int], int]:
    """(per-stage budgets, head budget) summing to ``total``; largest remainders get the rounding."""
    head = round(total * head_share)
    rest = total - head
    raw = [rest * s / sum(stage_shares) for s in stage_shares]
    budgets = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: budgets[i] - raw[i])[: rest - sum(budgets)]:
        budgets[i] += 1
    return budgets, head


class StagewiseParams(FeatureParams):
    preact: bool = Field(False, description="mimic the presets' pre-activation stage outputs")
    adapter: Literal["auto", "always", "never"] = "auto"
    reduction: Literal["mean", "sum"] = "mean"
    mode: Literal["progressive", "joint"] = "progressive"
    head_share: float = Field(0.25, gt=0, lt=1, description="share of the run's budget for the head stage")
    stage_shares: list[float] | None = Field(None, description="relative budgets of the backbone stages")

    @field_validator("stage_shares")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or min(value) <= 0):
            raise ValueError("stage shares must be positive numbers, one per backbone stage")
        return value


class StagewiseStageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mimic_stage: int | None = Field(None, ge=1, description="train backbone stage k alone to mimic the "
                                                            "teacher's stage k (forwards stop there)")


@register_method("stagewise")
class Stagewise(FeatureDistiller):
    """Progressive stage-by-stage feature mimicking, then the task head from ground truth (Gao et al.)."""

    terms = ("mimic", "ce")
    default_weights = {"mimic": 1.0, "ce": 1.0}
    Params = StagewiseParams
    StageParams = StagewiseStageParams
    teacher_cache = "none"
    composable = False
    soft_targets = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: StagewiseParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        check_pairs("stagewise", self.student_shapes, self.teacher_shapes)
        count = len(self.student_shapes)
        if params.stage_shares is not None and len(params.stage_shares) != count:
            raise ConfigError(f"method.params.stage_shares: {len(params.stage_shares)} shares for {count} "
                              f"backbone stages")
        adapters: list[nn.Module] = []
        for k, (s, t) in enumerate(zip(self.student_shapes, self.teacher_shapes, strict=True)):
            if s == t and params.adapter != "always":
                adapters.append(nn.Identity())
            elif params.adapter == "never":
                raise ConfigError(f"method.params.adapter: stage {k + 1} maps differ (student {tuple(s)}, "
                                  f"teacher {tuple(t)}); use adapter: auto or a matched pair")
            else:
                adapters.append(ConvRegressor(s, t, relu=False))
        self.adapters = nn.ModuleList(adapters)
        try:
            self.segments = segment_paths(student, self.student_taps.taps, context.input_shape)
        except ModelError as exc:
            raise ConfigError(f"method.params.student_layers: {exc}") from None

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return list(preset.stage_taps(self.params.preact))

    def default_stages(self, config: RunConfig) -> list[StageConfig]:
        """``stage1..K`` (or one ``backbone`` stage in joint mode) and ``head``, over the run's budget."""
        p: StagewiseParams = self.params
        unit = "steps" if config.train.steps is not None else "epochs"
        total = config.train.steps if unit == "steps" else config.train.epochs
        count = len(self.segments) - 1
        shares = [1.0] if p.mode == "joint" else (p.stage_shares or [1.0] * count)
        budgets, head = split_budget(total, p.head_share, shares)
        if min(budgets + [head]) < 1:
            raise ConfigError(f"train.{unit}: {total} {unit} cannot give the head and {len(budgets)} "
                              f"backbone stage(s) at least one each")

        def student(paths: list[str]) -> list[str]:
            return [f"student.{path}" for path in paths]

        if p.mode == "joint":
            backbone = [path for segment in self.segments[:-1] for path in student(segment)]
            plans = [("backbone", budgets[0], [*backbone, "adapters"], {})]
        else:
            plans = [(f"stage{k + 1}", budget, [*student(self.segments[k]), f"adapters.{k}"],
                      {"mimic_stage": k + 1}) for k, budget in enumerate(budgets)]
        stages = [StageConfig(name=name, train_only=train_only, weights={"mimic": 1.0, "ce": 0.0},
                              eval_every=budget, params=params, **{unit: budget})
                  for name, budget, train_only, params in plans]
        stages.append(StageConfig(name="head", train_only=student(self.segments[-1]),
                                  weights={"mimic": 0.0, "ce": 1.0}, **{unit: head}))
        return stages

    def stage_params(self, raw: dict[str, object], key: str) -> StagewiseStageParams:
        """As the base class; a ``mimic_stage`` beyond the student's backbone stages is refused."""
        params = super().stage_params(raw, key)
        k = params.mimic_stage
        if k is not None and k > len(self.adapters):
            raise ConfigError(f"{key}.mimic_stage: {k} names no backbone stage of the student "
                              f"(it has {len(self.adapters)})")
        return params

    def _mimic(self, k: int, student: Tensor, teacher: Tensor) -> Tensor:
        regressed, target = align_spatial(self.adapters[k](student), teacher)
        return mimic_loss(regressed, target, self.params.reduction)

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        mimic_stage = step.stage.params.mimic_stage
        if mimic_stage is not None:
            k = mimic_stage - 1
            with torch.no_grad():
                teacher = forward_until(self.teacher, self.teacher_taps.taps[k],
                                        self.teacher_inputs(batch.inputs))
            student = forward_until(self.student, self.student_taps.taps[k], batch.inputs)
            self.teacher_taps.clear()
            self.student_taps.clear()
            return DistillOutput({"mimic": self._mimic(k, student, teacher)}, student.new_empty(0))
        losses: dict[str, Tensor] = {}
        if step.weights["mimic"]:
            out = self.run_models(batch)
            logits = out.student_logits
            losses["mimic"] = sum(self._mimic(i, s, t) for i, (s, t) in
                                  enumerate(zip(out.student_features, out.teacher_features, strict=True)))
        else:
            logits = self.run_student(batch.inputs)
        if step.weights["ce"]:
            losses["ce"] = self.label_loss(logits, batch.label_targets)
        return DistillOutput(losses, logits)
