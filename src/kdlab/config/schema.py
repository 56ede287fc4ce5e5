"""The run configuration: a typed, validated tree read from YAML.

Every section rejects unknown keys, and numbers are strict: a boolean is not a number, a count is an
integer (``1e3`` and ``1000.0`` are refused where a count belongs), and a real must fit a float32 where
the training loop uses it. Method hyper-parameters are not listed here: each method declares its own
``Params`` model, validated when the method is built (see ``kdlab.methods``).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: a seed numpy, torch and Python all accept
Seed = Annotated[int, Field(ge=0, lt=2**32)]
#: a loss-term weight: 0 switches the term off; a negative weight would maximize the loss
Weight = Annotated[float, Field(ge=0)]
#: an Adam moment decay
Beta = Annotated[float, Strict(), Field(ge=0, lt=1)]
#: the largest float32: a learning rate or decay beyond it overflows in the optimizer step
FLOAT32_MAX = 3.4028234663852886e38


def _fits_float32(value: float) -> float:
    if value >= FLOAT32_MAX:
        raise ValueError(f"must be below {FLOAT32_MAX:.3g}, the largest float32 (the optimizer step would "
                         "overflow)")
    return value


#: a real the training loop multiplies in float32
Real32 = Annotated[float, AfterValidator(_fits_float32)]
#: a positive such real
Rate = Annotated[Real32, Field(gt=0)]
#: the longest file name most file systems take, in bytes
NAME_MAX = 255
#: the devices a run can train on
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


#: the knobs of each augmentation policy (``data.policy``)
POLICY_KNOBS = {"randaugment": ("num_ops", "num_magnitude_bins", "magnitude"),
                "trivialaugment": ("num_magnitude_bins",), "autoaugment": ("autoaugment_policy",)}
#: torchvision's defaults of those knobs
POLICY_DEFAULTS = {"num_ops": 2, "num_magnitude_bins": 31, "magnitude": 9, "autoaugment_policy": "imagenet"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=True)


class NoiseConfig(Section):
    """Label noise on the training (and validation) labels; see ``kdlab.data.corruption.noise``."""

    type: Literal["symmetric", "asymmetric", "pairflip"] = "symmetric"
    rate: float = Field(..., ge=0.0, le=1.0, description="share of labels flipped (per source class)")
    seed: Seed = Field(0, description="the noise draw; fixed per condition, independent of train.seed")
    flip_map: dict[str | int, str | int] | None = Field(
        None, description="asymmetric: SOURCE: TARGET class names or ids; default: the dataset's usual map")
    include_true_class: bool = Field(False, description="symmetric: draw the new label from all C classes")
    val: Literal["noisy", "clean"] = Field("noisy", description="noisy validation labels too, or clean")
    labels: str | None = Field(None, description="reuse a noisy_labels.pt (from a run dir or a study)")

    @model_validator(mode="after")
    def _applies(self) -> NoiseConfig:
        if self.flip_map is not None and self.type != "asymmetric":
            raise ValueError(f"flip_map applies to type 'asymmetric' only, not {self.type!r}")
        if self.include_true_class and self.type != "symmetric":
            raise ValueError(f"include_true_class applies to type 'symmetric' only, not {self.type!r}")
        return self


class ImbalanceConfig(Section):
    """Long-tailed training (and validation) class sizes; see ``kdlab.data.corruption.imbalance``."""

    profile: Literal["exponential", "step"] = "exponential"
    ratio: float = Field(..., ge=1.0, description="n_max / n_min")
    seed: Seed = Field(0, description="which samples of each class are kept")
    minority_fraction: float = Field(0.5, ge=0.0, le=1.0, description="step: share of minority classes")
    groups: Literal["thirds", "absolute"] = Field(
        "thirds", description="many/medium/few by thirds of classes ranked by count, or >100 / <20 samples")


class PolicyConfig(Section):
    """A per-sample augmentation policy of ``torchvision.transforms.v2`` (``kdlab.data.policies``),
    drawn afresh for every image after the crop/flip. A knob that the named policy has no use for is
    refused, so that a setting is never silently ignored; an unset knob takes torchvision's default
    (``POLICY_DEFAULTS``)."""

    name: Literal["randaugment", "trivialaugment", "autoaugment"]
    num_ops: int | None = Field(None, gt=0, description="randaugment: operations applied to each image "
                                                        "(default 2)")
    num_magnitude_bins: int | None = Field(None, ge=2, description="randaugment, trivialaugment: magnitude "
                                                                   "bins (default 31)")
    magnitude: int | None = Field(None, ge=0, description="randaugment: the magnitude bin, below "
                                                          "num_magnitude_bins (default 9)")
    autoaugment_policy: Literal["imagenet", "cifar10", "svhn"] | None = Field(
        None, description="autoaugment: the learned policy table (default imagenet)")

    @field_validator("num_ops", "num_magnitude_bins", "magnitude", "autoaugment_policy")
    @classmethod
    def _applies(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.data.get("name")
        if value is not None and name is not None and info.field_name not in POLICY_KNOBS[name]:
            raise ValueError(f"does not apply to policy {name!r}, which takes "
                             f"{', '.join(POLICY_KNOBS[name])}")
        return value

    @model_validator(mode="after")
    def _magnitude_in_range(self) -> PolicyConfig:
        magnitude, bins = self.setting("magnitude"), self.setting("num_magnitude_bins")
        if self.name == "randaugment" and magnitude >= bins:
            raise ValueError(f"magnitude {magnitude} must be below num_magnitude_bins {bins}")
        return self

    def setting(self, knob: str) -> Any:
        """The knob's value, or its default when unset."""
        value = getattr(self, knob)
        return POLICY_DEFAULTS[knob] if value is None else value


class ErasingConfig(Section):
    """``torchvision.transforms.v2.RandomErasing`` per training image, after the policy: a rectangle of
    ``scale`` of the image area and aspect ratio in ``ratio`` filled with the normalization mean colour
    (so that it normalizes to about 0)."""

    p: float = Field(0.25, gt=0, le=1, description="probability that an image gets a rectangle erased")
    scale: tuple[float, float] = Field((0.02, 0.33), strict=False, description="area share (min, max)")
    ratio: tuple[float, float] = Field((0.3, 3.3), strict=False, description="aspect ratio (min, max)")

    @model_validator(mode="after")
    def _ranges(self) -> ErasingConfig:
        if not 0 < self.scale[0] <= self.scale[1] < 1:
            raise ValueError(f"scale {list(self.scale)} must be (min, max) with 0 < min <= max < 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio {list(self.ratio)} must be (min, max) with 0 < min <= max")
        return self


class MixConfig(Section):
    """Mixup and CutMix of whole training batches (``torchvision.transforms.v2.MixUp``/``CutMix``, on the
    training device; ``kdlab.data.mixing``); the mixed label distributions are the targets of every CE
    term. Set ``mixup_alpha``, ``cutmix_alpha`` or both (then each mixed batch uses one of them)."""

    mixup_alpha: Rate | None = Field(None, description="MixUp: lambda ~ Beta(alpha, alpha)")
    cutmix_alpha: Rate | None = Field(None, description="CutMix: lambda ~ Beta(alpha, alpha)")
    prob: float = Field(1.0, gt=0, le=1, description="share of training batches that are mixed")
    switch_prob: float | None = Field(None, ge=0, le=1, description="with both alphas: share of the mixed "
                                                                    "batches that use CutMix (default 0.5)")

    @model_validator(mode="after")
    def _some_mix(self) -> MixConfig:
        if self.mixup_alpha is None and self.cutmix_alpha is None:
            raise ValueError("set mixup_alpha, cutmix_alpha or both (each > 0), or remove data.mix")
        if self.switch_prob is not None and (self.mixup_alpha is None or self.cutmix_alpha is None):
            raise ValueError("switch_prob chooses between MixUp and CutMix; it needs both mixup_alpha and "
                             "cutmix_alpha")
        return self


class DataConfig(Section):
    """Which dataset, how it is split, batched and augmented."""

    name: str
    root: str | None = None
    batch_size: int = Field(64, gt=0, description="global batch size (split across DDP ranks)")
    eval_batch_size: int = Field(256, gt=0)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="carved from train, stratified")
    split_seed: Seed = 0
    subset: int | None = Field(None, gt=0, description="keep at most this many training samples")
    augment: Literal["default", "standard", "none"] = "default"
    device_resident: Literal["auto", "on", "off"] = "auto"
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader workers per rank (DataLoader path only); auto: the CPU cores "
                            "shared among this node's ranks, at most 8")
    image_size: int | None = Field(None, gt=0)
    mean: list[float] | None = None
    std: list[PositiveFloat] | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options")
    noise: NoiseConfig | None = Field(None, description="label noise on train/val (test stays clean)")
    imbalance: ImbalanceConfig | None = Field(None, description="long-tail train/val (test stays balanced)")
    policy: PolicyConfig | None = Field(None, description="per-sample RandAugment, TrivialAugmentWide or "
                                                          "AutoAugment of training images")
    random_erasing: ErasingConfig | None = Field(None, description="per-sample random erasing of training "
                                                                   "images")
    mix: MixConfig | None = Field(None, description="mixup / cutmix of training batches (soft targets)")

    @field_validator("root", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, workers: int | str) -> int | str:
        if isinstance(workers, int) and workers < 0:
            raise ValueError("a worker count is 0 (load in the main process) or more, or 'auto'")
        return workers


class TeacherFastConfig(Section):
    """A teacher's fast path (``kdlab.models.fast``), each piece exact up to the precision in use:
    ``fast: false`` turns every piece off, ``fast: true`` (or unset) keeps these defaults."""

    fold_bn: bool = Field(True, description="fold eval-mode BatchNorm into the convolution before it")
    cast: bool = Field(True, description="cast conv/linear weights to the autocast dtype once, not at every "
                                         "forward")
    channels_last: bool | None = Field(None, description="channels_last weights; default: "
                                                         "train.channels_last")
    compile: bool | None = Field(None, description="torch.compile the teacher alone (no-grad, inductor "
                                                   "freezing); default: train.compile")

    @model_validator(mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return {"fold_bn": False, "cast": False, "channels_last": False, "compile": False}
        if not isinstance(value, dict | TeacherFastConfig):
            raise ValueError("use true, false or a mapping of fold_bn, cast, channels_last, compile")
        return value


class ModelConfig(Section):
    """A model by registry name (``resnet8x4``, ``torchvision:resnet18``, ``timm:...``)."""

    name: str
    pretrained: bool | str = Field(False, description="torchvision/timm weights, or a state_dict path")
    checkpoint: str | None = Field(None, description="a kdlab run dir or checkpoint to load weights from")
    mean: list[float] | None = Field(None, description="input normalization the model expects")
    std: list[PositiveFloat] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    freeze_bn: bool = Field(False, description="BatchNorm stays in eval mode while training (DomainBed)")
    fast: TeacherFastConfig | None = Field(None, description="a teacher's fast path (true, false or its "
                                                             "pieces); unset: on")

    def fast_path(self) -> TeacherFastConfig:
        """The fast path of this model as a teacher (the defaults when unset)."""
        return self.fast if self.fast is not None else TeacherFastConfig()


class MethodConfig(Section):
    """A distillation method by registry name, loss-term weights and its own parameters."""

    name: str = "kd"
    weights: dict[str, Weight] = Field(default_factory=dict, description="per loss term; unset = default")
    params: dict[str, Any] = Field(default_factory=dict)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of every CE term on the "
                                                                "labels (hard or mixed)")


#: the optimizers kdlab builds itself; ``timm:NAME`` names one of timm's (``kdlab.engine.timm_optim``)
OPTIMIZERS = ("sgd", "adam", "adamw")
TIMM_PREFIX = "timm:"


class OptimConfig(Section):
    """The optimizer: kdlab's ``sgd``, ``adam`` or ``adamw``, or ``timm:NAME`` built by
    ``timm.optim.create_optimizer_v2`` (``timm:lamb``, ``timm:lars``, ...; needs timm) on kdlab's
    parameter groups, with ``lr`` and ``weight_decay``, ``momentum`` where it takes one and ``betas``
    where it takes two; its other settings are timm's defaults."""

    name: str = Field("sgd", description="sgd, adam, adamw or timm:NAME (timm.optim.list_optimizers())")
    lr: Rate = 0.05
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: Real32 = Field(5e-4, ge=0)
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), strict=False, description="a list of two in YAML")
    no_decay_norm_bias: bool = Field(False, description="no weight decay on norm layers and biases")

    @field_validator("name")
    @classmethod
    def _known_form(cls, name: str) -> str:
        if name not in OPTIMIZERS and not re.fullmatch(rf"{TIMM_PREFIX}\w+", name):
            raise ValueError(f"expected 'sgd', 'adam' or 'adamw', or timm:NAME (timm's optimizer NAME), not "
                             f"{name!r}")
        return name

    @model_validator(mode="after")
    def _nesterov_applies(self) -> OptimConfig:
        if self.nesterov and self.name.startswith(TIMM_PREFIX):
            raise ValueError(f"nesterov is kdlab's sgd setting; {self.name} takes timm's defaults (timm:sgd "
                             "is Nesterov SGD, timm:momentum plain momentum SGD): unset nesterov")
        return self


class ScheduleConfig(Section):
    """The learning-rate schedule, applied every step; epochs (or steps, for a step budget) count it."""

    name: Literal["multistep", "step", "cosine", "poly", "onecycle", "constant"] = "multistep"
    milestones: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=list, description="in epochs (or steps if step-based)")
    gamma: Real32 = Field(0.1, gt=0, description="multistep/step: the lr is multiplied by gamma at each "
                                                  "milestone / every step_size")
    step_size: float | None = Field(None, gt=0, description="step: epochs (or steps) between decays")
    power: float = Field(0.9, gt=0, description="poly: lr * (1 - t)^power, t the share of the schedule done")
    pct_start: float = Field(0.3, gt=0, lt=1, description="onecycle: share of the run spent rising")
    div_factor: float = Field(25.0, gt=1, description="onecycle: the start lr is lr / div_factor")
    final_div_factor: float = Field(1e4, gt=1, description="onecycle: the end lr is start lr / this")
    warmup: float = Field(0.0, ge=0, description="linear warm-up length in epochs (or steps)")
    warmup_start_factor: float = Field(0.01, gt=0, le=1)
    min_lr: Real32 = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _settings_apply(self) -> ScheduleConfig:
        if self.name == "step" and self.step_size is None:
            raise ValueError("schedule 'step' needs step_size (epochs, or steps, between decays)")
        if self.name == "onecycle" and self.warmup:
            raise ValueError("schedule 'onecycle' rises over pct_start of the run itself; unset warmup")
        return self


class StageConfig(Section):
    """One stage of a multi-stage run (FitNet's hint stage, init stages, stage-by-stage KD).

    ``optim`` and ``schedule`` hold only what differs from the top-level sections; ``weights`` overrides
    the method's loss-term weights for this stage; ``freeze`` lists module paths of the distiller
    (``student.layer1``, ``connector``) whose parameters are frozen and whose norm layers stay in eval
    mode; ``train_only``, when set, freezes everything except the listed paths; ``params`` holds the
    method's own settings for this stage (its ``StageParams``, e.g. stagewise's ``mimic_stage``). A
    stage's name is only a label: nothing is read from it.
    """

    name: str
    epochs: int | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0)
    optim: dict[str, Any] = Field(default_factory=dict)
    schedule: dict[str, Any] = Field(default_factory=dict)
    weights: dict[str, Weight] = Field(default_factory=dict)
    freeze: list[str] = Field(default_factory=list)
    train_only: list[str] | None = None
    eval_every: int | None = Field(None, gt=0)
    params: dict[str, Any] = Field(default_factory=dict, description="the method's settings for this stage")

    @model_validator(mode="after")
    def _budget(self) -> StageConfig:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(f"stage {self.name!r}: set exactly one of epochs or steps")
        return self


class EarlyStoppingConfig(Section):
    """Stop a run whose validation metric stopped improving (``kdlab.engine.early_stopping``)."""

    patience: int = Field(..., gt=0, description="evaluations without improvement before the run stops")
    min_delta: float = Field(0.0, ge=0, description="the smallest change that counts as an improvement")
    metric: Literal["top1", "nll", "ece"] | None = Field(None, description="default: train.select_metric")


class TrainConfig(Section):
    epochs: int | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0, description="step budget in optimizer steps (instead of epochs)")
    accumulate_grad_batches: int = Field(
        1, gt=0, description="micro-batches of data.batch_size per optimizer step (the effective batch is "
                             "their product); every step count counts optimizer steps")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: bool = Field(True, description="channels_last memory format for 4-D inputs")
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default", description="torch.compile mode; reduce-overhead adds CUDA graphs (training batches "
                               "are always whole: the last partial batch is dropped)")
    grad_clip: Rate | None = None
    sync_batchnorm: bool = Field(
        True, description="under DDP, BatchNorm of the trained modules normalizes with the statistics of "
                          "the global batch (as one process would), not of each process's share")
    seed: Seed = 0
    deterministic: bool = False
    eval_every: int | None = Field(
        None, gt=0, description="evaluate (and checkpoint) every N epochs, or N steps if step-based; "
                                "default: every epoch, or about 10 times in a step budget and at least once "
                                "per epoch")
    log_every: int = Field(50, gt=0, description="log losses, lr, img/s every N (optimizer) steps")
    select_metric: Literal["top1", "nll", "ece"] = "top1"
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    progress: bool = True
    tensorboard: bool = Field(False, description="also log to RUN_DIR/tb (needs kdlab[tb])")
    per_class: Literal["auto", "on", "off"] = Field(
        "auto", description="per-class (and, under data.imbalance, many/medium/few) top-1 in every "
                            "evaluation; auto: on when data.noise or data.imbalance is set")
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="stop after this many evaluations without a better validation metric")
    top_k: list[Annotated[int, Field(ge=2)]] = Field(
        default_factory=lambda: [5], description="top-k accuracies in every evaluation besides top-1 "
                                                 "(top5 by default)")


    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not DEVICE.fullmatch(device):
            raise ValueError("kdlab trains on auto, cpu, cuda or cuda:N")
        return device


class AveragingConfig(Section):
    """Weight averaging of the student (``kdlab.engine.averaging``): a strategy by name and its own
    ``params``, validated by the strategy. ``buffers`` is the BatchNorm policy: ``average`` (averaged
    like weights; constant under ``student.freeze_bn``) or ``recalibrate`` (re-estimated over
    ``bn_batches`` training batches before the averaged model is evaluated).
    """

    strategy: str = Field("none", description="none, swa, ema, sma, swad or wakd")
    params: dict[str, Any] = Field(default_factory=dict)
    buffers: Literal["average", "recalibrate"] = "average"
    bn_batches: int = Field(100, gt=0)

    @model_validator(mode="after")
    def _params_need_a_strategy(self) -> AveragingConfig:
        if self.strategy == "none" and self.params:
            raise ValueError("params are given but strategy is 'none'; set averaging.strategy")
        return self


class TeacherCacheConfig(Section):
    """A replayable teacher-output cache (``kdlab.teacher_cache``): where it lives, and how
    ``kdlab cache-teacher`` fills it. Training with ``path`` set replays the cached augmentations and
    reads the cached outputs instead of running the teacher.
    """

    path: str = Field(description="the cache directory")
    epochs: int = Field(10, gt=0, description="epochs of pre-drawn augmentations to cache")
    outputs: Literal["logits", "topk"] = Field(
        "logits", description="full logits in fp16, or the top-k logits with the rest as uniform mass")
    topk: int = Field(10, gt=0, description="k of outputs: topk")
    features: bool = Field(False, description="also cache the teacher features the method taps")
    seed: Seed = Field(0, description="seed of the cached augmentation draws")
    batch_size: int = Field(256, gt=0, description="teacher batch size while filling the cache")
    cycle: bool = Field(True, description="replay epoch e as cached epoch e mod epochs when training "
                                          "runs longer than the cache; false: such a run is an error")


class RunConfig(Section):
    """A whole run: data, student, optional teacher, method, optimization and output."""

    data: DataConfig
    student: ModelConfig
    teacher: ModelConfig | None = None
    teachers: list[ModelConfig] = Field(default_factory=list,
                                        description="an ensemble of teachers (instead of 'teacher')")
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig
    stages: list[StageConfig] = Field(default_factory=list, description="multi-stage plan; see StageConfig")
    averaging: AveragingConfig = Field(default_factory=AveragingConfig)
    teacher_cache: TeacherCacheConfig | None = None
    out_dir: str = "runs"
    name: str | None = Field(None, description="the run directory's name under out_dir (default: made up)")

    def teacher_fast(self) -> TeacherFastConfig | None:
        """The fast path of the teacher (of every member of the ensemble), or None without a teacher."""
        teacher = self.teacher or next(iter(self.teachers), None)
        return teacher.fast_path() if teacher is not None else None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        if name is not None and (not name.strip() or name in (".", "..") or "/" in name or "\\" in name):
            raise ValueError("a run name is one folder name under out_dir: no '/', '\\', '.' or '..'")
        if name is not None and len(name.encode()) > NAME_MAX:
            raise ValueError(f"a run name is one folder name of at most {NAME_MAX} bytes; this one has "
                             f"{len(name.encode())}")
        return name

    @model_validator(mode="after")
    def _budget(self) -> RunConfig:
        has_budget = self.train.epochs is not None or self.train.steps is not None
        if self.stages and has_budget:
            raise ValueError("with 'stages', set epochs or steps per stage, not train.epochs/train.steps")
        if not self.stages and not has_budget:
            raise ValueError("set train.epochs or train.steps")
        if self.train.epochs is not None and self.train.steps is not None:
            raise ValueError("set train.epochs or train.steps, not both (train.epochs=null turns an epoch "
                             "budget into a step budget)")
        if self.teacher is not None and self.teachers:
            raise ValueError("set 'teacher' (one model) or 'teachers' (an ensemble), not both")
        if self.student.fast is not None:
            raise ValueError("student.fast: the fast path is for frozen teachers; remove it from student")
        for i, member in enumerate(self.teachers[1:], 1):
            if member.fast_path() != self.teachers[0].fast_path():
                raise ValueError(f"teachers.{i}.fast: every member of an ensemble takes the same fast path; "
                                 "set it as in teachers.0")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        return self
