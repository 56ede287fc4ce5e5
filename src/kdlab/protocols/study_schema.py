"""The study file (``kdlab study STUDY.yaml``): a grid of methods x conditions x pairs x seeds.

Validated like a run config: every section rejects unknown keys, and a mistake is one line naming the
key and its closest valid spelling. Example::

    name: mnist-robustness
    base: ../configs/mnist/_recipe.yaml        # a run config (relative to this file) or an inline mapping
    overrides: {train.epochs: 8}               # dotted keys, applied to every run
    pairs: [{teacher: cnn_small, student: cnn_tiny}]
    methods:
      - {name: ce}                             # the baseline: the student with cross-entropy alone
      - {name: kd, weights: {ce: 0.5, kd: 0.5}, params: {temperature: 4}}
      - {name: at}
    conditions:
      noise: [{type: symmetric, rates: [0.0, 0.2, 0.4]}]      # rate 0 is the clean condition
      imbalance: [{profile: exponential, ratios: [1, 10, 100]}]
    seeds: [0, 1]
    teacher: {data: corrupted, per_seed: true, share_outputs: true}
    workers: 2
    executor: {backend: local, retries: 1}    # or {backend: ray, address: auto, num_cpus: 4, num_gpus: 1}

A method may search hyper-parameters (:mod:`.search`): ``search.draws`` draws per grid cell, draw 0 the
defaults, the report selecting per cell on validation::

    methods:
      - name: kd
        search:
          method.params.temperature: {distribution: log_uniform, low: 1, high: 16, default: 4}
          method.weights.kd: {distribution: uniform, low: 0.1, high: 0.9}
    search: {draws: 8, seed: 0}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from kdlab.config.load import ConfigError, explain, read_yaml
from kdlab.config.schema import Section
from kdlab.protocols.executor import ExecutorConfig
from kdlab.protocols.search import HParamSpace, SearchConfig


class PairConfig(Section):
    """A teacher/student pair by model registry name; ``label`` names it in tables (default T->S)."""

    teacher: str
    student: str
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or f"{self.teacher}->{self.student}"


class MethodEntry(Section):
    """A method by registry name, its loss weights and parameters, and dotted ``overrides`` for its runs."""

    name: str
    label: str | None = Field(None, description="the name in tables; default: name")
    weights: dict[str, float] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted keys for this method's runs")
    pairs: list[str] | None = Field(None, description="only these pairs (by name), e.g. FSP: equal widths")
    search: dict[str, HParamSpace] = Field(
        default_factory=dict, description="dotted run-config keys to search (search.draws draws per cell)")

    @property
    def title(self) -> str:
        return self.label or self.name


class NoiseAxis(Section):
    """Label-noise conditions: one per rate (rate 0 is the clean condition)."""

    type: Literal["symmetric", "asymmetric", "pairflip"] = "symmetric"
    rates: list[float] = Field(..., min_length=1)
    flip_map: dict[str | int, str | int] | None = None
    include_true_class: bool = False
    val: Literal["noisy", "clean"] = "noisy"

    @model_validator(mode="after")
    def _rates(self) -> NoiseAxis:
        if any(not 0 <= rate <= 1 for rate in self.rates):
            raise ValueError(f"every rate must be in [0, 1]; got {self.rates}")
        return self


class ImbalanceAxis(Section):
    """Long-tail conditions: one per imbalance ratio (ratio 1 is the clean condition)."""

    profile: Literal["exponential", "step"] = "exponential"
    ratios: list[float] = Field(..., min_length=1)
    minority_fraction: float = Field(0.5, ge=0, le=1)
    groups: Literal["thirds", "absolute"] = "thirds"

    @model_validator(mode="after")
    def _ratios(self) -> ImbalanceAxis:
        if any(ratio < 1 for ratio in self.ratios):
            raise ValueError(f"every ratio must be >= 1; got {self.ratios}")
        return self


class ConditionsConfig(Section):
    """The data conditions: the noise axis and the imbalance axis, each against clean data, or crossed."""

    noise: list[NoiseAxis] = Field(default_factory=list)
    imbalance: list[ImbalanceAxis] = Field(default_factory=list)
    cross: bool = Field(False, description="every noise rate x every imbalance ratio")
    noise_seed: int = Field(0, description="one noise draw per condition, shared by every run and seed")
    imbalance_seed: int = 0


class TeacherPolicy(Section):
    """How teachers are trained: on the condition's corrupted data (default) or on clean data."""

    data: Literal["corrupted", "clean"] = "corrupted"
    per_seed: bool = Field(True, description="one teacher per seed; false: the first seed's teacher for all")
    checkpoint: Literal["best", "last"] = Field(
        "best", description="best: the teacher run's result (validation-selected, or its final average under "
                            "weight averaging); last: its last weights")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted keys for teacher runs only")
    share_outputs: bool = Field(
        True, description="fill one replayable teacher cache per teacher (and set of cache-relevant "
                          "student settings) under STUDY/teacher_cache, read by every student whose method "
                          "replays teacher logits instead of running the teacher; false: every student "
                          "runs its teacher")


class ReportConfig(Section):
    split: Literal["test_last", "test_selected"] = Field(
        "test_last", description="which test metrics the tables show: last epoch or validation-selected")


class StudyConfig(Section):
    """A whole study; see the module docstring."""

    name: str
    base: str | dict[str, Any]
    overrides: dict[str, Any] = Field(default_factory=dict)
    pairs: list[PairConfig] = Field(..., min_length=1)
    methods: list[MethodEntry] = Field(..., min_length=1)
    baseline: str | None = Field("ce", description="label of the method the tables take deltas against")
    conditions: ConditionsConfig = Field(default_factory=ConditionsConfig)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    teacher: TeacherPolicy = Field(default_factory=TeacherPolicy)
    workers: int | None = Field(
        None, ge=1, description="runs at once; default: 1 locally, as many as Ray's resources admit on ray")
    threads_per_worker: int | None = Field(
        None, ge=1, description="default: locally, CPU cores / workers; on ray, executor.num_cpus")
    devices: list[str] | None = Field(
        None, description="local: CUDA_VISIBLE_DEVICES values handed out to workers (each run to the least "
                          "busy); on ray, executor.num_gpus instead")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    out_dir: str = Field("runs/studies", description="the study directory is OUT_DIR/NAME")
    report: ReportConfig = Field(default_factory=ReportConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)

    @model_validator(mode="after")
    def _unique(self) -> StudyConfig:
        named = (("methods", [m.title for m in self.methods]), ("pairs", [p.name for p in self.pairs]),
                 ("seeds", self.seeds))
        for what, names in named:
            if len(set(names)) != len(names):
                raise ValueError(f"{what} must be unique (give methods a 'label'): {names}")
        if self.baseline is not None and self.baseline not in {m.title for m in self.methods}:
            raise ValueError(f"baseline {self.baseline!r} is not among the methods' labels")
        pairs = {p.name for p in self.pairs}
        for method in self.methods:
            unknown = set(method.pairs or ()) - pairs
            if unknown:
                raise ValueError(f"method {method.title!r}: unknown pair {sorted(unknown)[0]!r}; "
                                 f"pairs: {', '.join(sorted(pairs))}")
        return self


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[StudyConfig, Path]:
    """Read and validate a study file; returns the config and the file's folder (for relative paths)."""
    path = Path(path)
    tree = read_yaml(path)
    tree.update(overrides or {})
    try:
        return StudyConfig.model_validate(tree), path.resolve().parent
    except ValidationError as exc:
        raise ConfigError(explain(exc, str(path), StudyConfig)) from None
