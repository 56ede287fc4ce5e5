"""The Distiller: the one trainable module the engine runs, whatever the method.

A Distiller owns the student and the method's trainable parts (connectors, embeddings, memories).
The teacher is held beside them in a :class:`FrozenTeacher` (as timm's distillation task holds its
teacher), not as a submodule: it is absent from ``parameters()``, ``state_dict()`` and whatever DDP
wraps, kept in eval mode, and run under no-grad. ``Distiller.to`` moves the trainable modules only;
:meth:`Distiller.place` moves them and the teacher. ``forward(batch, step)`` returns the unweighted
loss terms and the student's logits.

The trainer talks to a method only through what this interface declares: at every step it passes a
frozen :class:`StepContext` (the stage, the epochs done in it, the global step and the stage's loss
weights); it never writes the method's attributes. The weights of the terms come from the config
(``method.weights``, over ``default_weights``) and per stage from ``stages[i].weights``; the trainer's
stage plan is their one owner and sums the terms with them. A method declares the per-stage settings
it reads (``StageParams``, given as ``stages[i].params``) as a typed model, not by stage names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from kdlab.config.load import explain
from kdlab.config.schema import RunConfig, StageConfig
from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.ensemble import TeacherEnsemble
from kdlab.methods.labels import label_cross_entropy
from kdlab.models.fast import FastPlan, compile_frozen, describe, prepare_frozen
from kdlab.models.hooks import FeatureTaps


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DistillContext:
    """What a method may need to size its parts: data shape, class count, split size, model names."""

    num_classes: int
    input_shape: tuple[int, int, int]
    num_train_samples: int
    student_name: str = ""
    teacher_name: str = ""


@dataclass
class DistillOutput:
    losses: dict[str, Tensor]
    logits: Tensor


@dataclass(frozen=True)
class StageInfo:
    """The stage a step belongs to: its name, position in the plan, length in epochs and the method's
    typed settings for it (``StageParams`` validated from ``stages[i].params``)."""

    name: str = "train"
    index: int = 0
    epochs: float = 0.0
    params: BaseModel = field(default_factory=lambda: NoParams())


@dataclass(frozen=True)
class StepContext:
    """What the trainer tells the method at each step: the stage, the epochs done in it before this
    step (``stage_progress``, what warm-ups and schedules count), the 0-based global step, and the
    stage's loss weights (a method may skip computing a term whose weight is 0)."""

    stage: StageInfo
    stage_progress: float
    step: int
    weights: Mapping[str, float]


class SharedForward:
    """One step's student and teacher forwards, run once and read by every part of a composed method.

    Each model's output is kept for the one input tensor it was run on (the batch's); every forward
    hook registered on the model (every part's feature taps) fires in that one forward.
    """

    def __init__(self) -> None:
        self._outputs: dict[str, tuple[Tensor, Tensor]] = {}

    def run(self, role: str, model: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
        """``model(inputs)``, or its output from earlier in the step for these very inputs."""
        kept = self._outputs.get(role)
        if kept is not None and kept[0] is inputs:
            return kept[1]
        output = model(inputs)
        self._outputs[role] = (inputs, output)
        return output


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """``sum_k w_k * L_k``; a term with weight 0 adds nothing (its value may even be absent)."""
    total = sum(weights[name] * value for name, value in losses.items() if weights[name])
    if not isinstance(total, Tensor):
        raise ValueError("every loss term has weight 0")
    return total


def _normalization_map(
    source: tuple[Sequence[float], Sequence[float]], target: tuple[Sequence[float], Sequence[float]]
) -> tuple[Tensor, Tensor] | None:
    """Scale and shift taking inputs normalized with ``source`` to inputs normalized with ``target``.

    x_target = (x_source * std_s + mean_s - mean_t) / std_t = x_source * a + b.
    """
    mean_s, std_s = (torch.tensor(v, dtype=torch.float32) for v in source)
    mean_t, std_t = (torch.tensor(v, dtype=torch.float32) for v in target)
    if torch.equal(mean_s, mean_t) and torch.equal(std_s, std_t):
        return None
    scale = (std_s / std_t).view(1, -1, 1, 1)
    shift = ((mean_s - mean_t) / std_t).view(1, -1, 1, 1)
    return scale, shift


class FrozenTeacher:
    """A teacher held outside the module tree of the distiller that uses it: in eval mode, with no
    gradients (its BatchNorm statistics never move)."""

    def __init__(self, module: nn.Module) -> None:
        module.eval()
        module.requires_grad_(False)
        self.module = module
        #: whether :meth:`speed_up` has changed the module (its state_dict is then no longer the weights
        #: it was built with)
        self.sped_up = False

    def speed_up(self, plan: FastPlan, input_shape: Sequence[int] | None = None) -> list[str]:
        """Put the teacher (every member of an ensemble) on the fast path of ``plan``, in place, after its
        feature taps are registered (a tap of a pre-BN output keeps that pair unfolded); ``input_shape``
        (C, H, W) lets a model fx cannot trace be exported. Returns log lines saying what was done."""
        ensemble = isinstance(self.module, TeacherEnsemble)
        members = list(self.module.members) if ensemble else [self.module]
        lines = []
        for i, member in enumerate(members):
            report = prepare_frozen(member, plan, input_shape)
            name = f"teacher{f' {i}' if ensemble else ''} ({type(member).__name__})"
            lines += describe(name, plan, report)
        if ensemble:
            self.module.restack()
        if plan.compile:
            for member in members:
                compile_frozen(member, plan.compile_mode)
        self.sped_up = True
        return lines


class Distiller(nn.Module):
    """Base class of every method. Subclasses set ``terms``, ``default_weights`` and ``Params``."""

    terms: ClassVar[tuple[str, ...]] = ()
    default_weights: ClassVar[dict[str, float]] = {}
    needs_teacher: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = NoParams
    #: the per-stage settings the method reads from ``StepContext.stage.params``
    StageParams: ClassVar[type[BaseModel]] = NoParams
    #: the evaluated model (a key of the trainer's ``eval_models()``) whose validation metric selects
    #: ``best.pt`` and whose test metrics the run summary reports: the deployable model of the method.
    select_model: ClassVar[str] = "student"
    #: what of the teacher a replayable teacher cache can stand in for: ``"logits"`` (the method reads
    #: the teacher only through :meth:`batch_teacher_logits`), ``"features"`` (through
    #: ``FeatureDistiller.run_models``), ``"members"`` (an ensemble's member logits, through
    #: ``EnsembleTeacherMixin.batch_teacher_members``), or ``"none"`` (it runs the teacher on other inputs).
    teacher_cache: ClassVar[Literal["none", "logits", "features", "members"]] = "none"
    #: whether the method can be a part of a composed method: it runs the student and the teacher only
    #: on the batch's inputs, through :meth:`student_forward` and :meth:`teacher_logits` (or
    #: ``FeatureDistiller.run_models``), and plans no stages of its own
    composable: ClassVar[bool] = False
    #: whether the method reads the labels only through :meth:`label_loss` (its CE terms), so that a
    #: mixed batch's soft targets (``data.mix``) reach every term that reads labels; mixup/cutmix are
    #: refused for a method that also reads the class ids in another way
    soft_targets: ClassVar[bool] = False
    #: whether the method keeps state per training sample, keyed by ``Batch.indices`` (a memory bank,
    #: past predictions); such a method needs a source whose indices identify samples across epochs
    keys_samples: ClassVar[bool] = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        params: BaseModel,
        context: DistillContext,
        *,
        student_norm: tuple[Sequence[float], Sequence[float]] | None = None,
        teacher_norm: tuple[Sequence[float], Sequence[float]] | None = None,
        weights: Mapping[str, float] | None = None,
        owns_student: bool = True,
        label_smoothing: float = 0.0,
    ) -> None:
        """``weights``: the configured weight of every term (default ``default_weights``).
        ``owns_student=False`` (a part of a composed method): the student is read, not registered as
        a submodule; the composed method that owns it moves, trains and saves it. ``label_smoothing``:
        that of every CE term on the labels (``method.label_smoothing``, :meth:`label_loss`)."""
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ConfigError(f"method {type(self).__name__} needs a teacher: set the 'teacher' section")
        if owns_student:
            self.student = student
        else:
            object.__setattr__(self, "student", student)
        self._shared: SharedForward | None = None
        self.params = params
        self.context = context
        self.weights: Mapping[str, float] = MappingProxyType(dict(weights or self.default_weights))
        self.label_smoothing = label_smoothing
        self.frozen = FrozenTeacher(teacher) if teacher is not None else None
        renormalize = None
        if teacher is not None and student_norm is not None and teacher_norm is not None:
            renormalize = _normalization_map(student_norm, teacher_norm)
        self.renormalizes = renormalize is not None
        scale, shift = renormalize or (None, None)
        self.register_buffer("teacher_input_scale", scale, persistent=False)
        self.register_buffer("teacher_input_shift", shift, persistent=False)

    @property
    def teacher(self) -> nn.Module | None:
        return self.frozen.module if self.frozen is not None else None

    def place(self, *args: Any, **kwargs: Any) -> Distiller:
        """``to(*args, **kwargs)`` of the trainable modules and of the frozen teacher (device, dtype,
        memory format)."""
        self.to(*args, **kwargs)
        if self.teacher is not None:
            self.teacher.to(*args, **kwargs)
        return self

    def train(self, mode: bool = True) -> Distiller:
        """As ``nn.Module.train``; the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def teacher_inputs(self, inputs: Tensor) -> Tensor:
        """Inputs re-normalized to the teacher's mean/std when they differ from the student's."""
        if not self.renormalizes:
            return inputs
        return inputs * self.teacher_input_scale + self.teacher_input_shift

    @torch.no_grad()
    def teacher_logits(self, inputs: Tensor) -> Tensor:
        """The teacher's logits (no grad) for student-normalized ``inputs``."""
        if self._shared is not None:
            return self._shared.run("teacher", lambda x: self.teacher(self.teacher_inputs(x)), inputs)
        return self.teacher(self.teacher_inputs(inputs))

    def student_forward(self, inputs: Tensor) -> Tensor:
        """The student's logits for ``inputs`` (within a composed step: one forward for every part)."""
        if self._shared is not None:
            return self._shared.run("student", self.student, inputs)
        return self.student(inputs)

    @contextlib.contextmanager
    def sharing(self, shared: SharedForward) -> Iterator[None]:
        """Within the block, :meth:`student_forward` and :meth:`teacher_logits` read ``shared``."""
        self._shared = shared
        try:
            yield
        finally:
            self._shared = None

    def teacher_feature_taps(self) -> tuple[FeatureTaps, list[torch.Size]] | None:
        """The teacher taps (and their feature shapes) whose features a teacher cache must hold, or None
        for a method that reads no teacher feature."""
        return None

    def label_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The CE term on the labels: ``logits`` against class ids or a mixed batch's distributions
        (``Batch.label_targets``), with the method's label smoothing (:mod:`kdlab.methods.labels`)."""
        return label_cross_entropy(logits, targets, self.label_smoothing)

    def batch_teacher_logits(self, batch: Batch) -> Tensor:
        """The teacher's logits for ``batch``: from the teacher cache when the batch carries them."""
        if batch.teacher is not None:
            return batch.teacher["logits"]
        return self.teacher_logits(batch.inputs)

    def forward(self, batch: Batch, step: StepContext | None = None) -> DistillOutput:
        """The loss terms and student logits of one step (outside a trainer: the first step of a
        one-stage run with the configured weights)."""
        return self.distill(batch, step if step is not None else self.first_step())

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        raise NotImplementedError

    def first_step(self) -> StepContext:
        """The context of step 0 of a one-stage run with the configured weights."""
        return StepContext(StageInfo(params=self.stage_params({}, "stages.0.params")), 0.0, 0, self.weights)

    def eval_reference(self) -> Callable[[Tensor], Tensor] | None:
        """Logits every evaluation compares models against (agreement, KL), or None for no comparison."""
        return None

    def eval_models(self) -> dict[str, nn.Module]:
        """Models evaluated beside the student, by name (e.g. the other peers of an online cohort)."""
        return {}

    def default_stages(self, config: RunConfig) -> list[StageConfig] | None:
        """The stage plan of a run whose config lists no ``stages`` (None: one stage from ``train``).

        A method whose schedule depends on the models (one stage per backbone stage, say) derives it
        here from the config's total budget; an explicit ``stages:`` list in the config always wins.
        """
        return None

    def diagnostics(self) -> dict[str, float]:
        """Scalars the method reports at each evaluation (statistics since the previous one), or {}.

        Called on every process at every evaluation; the trainer logs them as a ``method`` record.
        """
        return {}

    @classmethod
    def student_module(cls, network: nn.Module, config: RunConfig, weights: Mapping[str, Tensor]
                       ) -> nn.Module:
        """The module that a checkpoint's student ``weights`` fit, built around a fresh ``network`` of
        the student's architecture (a method that trains the student in another form wraps it here)."""
        return network

    @classmethod
    def deploy_student(cls, student: nn.Module) -> nn.Module:
        """The one plain network that ``student_module`` deploys as (eval, export)."""
        return student

    def extra_parameter_count(self) -> int:
        """Trainable parameters the method adds beyond the student (connectors, embeddings)."""
        student = {id(p) for p in self.student.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in student)

    @classmethod
    def validate_params(cls, raw: dict[str, Any]) -> BaseModel:
        return cls.Params.model_validate(raw)

    @classmethod
    def term_defaults(cls, params: BaseModel) -> dict[str, float]:
        """Every loss term of the method with its default weight (for most methods fixed; a composed
        method's terms depend on its parts)."""
        return dict(cls.default_weights)

    def stage_params(self, raw: dict[str, Any], key: str) -> BaseModel:
        """A stage's ``params`` (config path ``key``) validated as the method's ``StageParams``; a
        mistake, or settings that do not fit these models, is one ``ConfigError`` naming ``key``."""
        try:
            return self.StageParams.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(explain(exc, "config", self.StageParams, prefix=f"{key}.")) from None
