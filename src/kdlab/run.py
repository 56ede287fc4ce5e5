"""One run from a config: data, models, distiller, trainer, run directory, test evaluation, summary.

This is what ``kdlab train`` and the Python API call. A run directory holds ``config.yaml`` (the
resolved config), ``metrics.jsonl``, ``last.pt``, ``best.pt`` and, when training ends,
``summary.json``. The test split is evaluated only here, after training: for the last model and for
the model selected on validation (``best.pt``). A run whose weight-averaging strategy reports the
final average (swa, ema, swad, wakd) also writes that model to ``averaged.pt`` when training ends.

A run directory, wherever one is accepted in place of a checkpoint (``teacher.checkpoint``,
``kdlab eval``, ``kdlab export``), means the model its summary reports as the run's result:
``averaged.pt`` when present, else ``best.pt``, else ``last.pt`` (whose ``model`` is the online
student, also under averaging). ``summary.json`` names that file under ``checkpoint``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlab.config.compare import RESUME_FIXED, RESUME_FREE, first_change
from kdlab.config.load import ConfigError, apply_overrides, dump_config, read_yaml, validate
from kdlab.config.schema import ModelConfig, RunConfig
from kdlab.core import checkpoint, distributed
from kdlab.data import DataBundle, build_data
from kdlab.data.corruption import CorruptionError
from kdlab.engine.averaging import MODEL_NAME, AveragingStrategy, build_averager
from kdlab.engine.callbacks import Callback
from kdlab.engine.metrics import evaluate_logits
from kdlab.engine.stages import StageClock, plan_stages
from kdlab.engine.trainer import CHECKPOINT_FORMAT, Trainer
from kdlab.ensemble import BatchEnsemble, TeacherEnsemble, merge_batchensemble
from kdlab.methods import DistillContext, Distiller, build_distiller
from kdlab.models import build_model
from kdlab.models.batchnorm import freeze_batchnorm
from kdlab.models.surgery import WeightFileError
from kdlab.robustness import class_breakdown, corruption_specs, corruption_summary, save_noisy_labels
from kdlab.teacher_cache import CacheError, TeacherCacheReplay, run_signature


@dataclass
class RunResult:
    run_dir: Path | None
    summary: dict[str, Any]
    student: nn.Module


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available; use cpu or auto")
    return device


#: the files a run directory can mean, in order of preference (see the module docstring)
RUN_CHECKPOINTS = ("averaged.pt", "best.pt", "last.pt")


def checkpoint_path(location: str | Path, key: str) -> Path:
    """A run directory means its result checkpoint (the first of ``RUN_CHECKPOINTS`` it holds); a file is
    itself."""
    path = Path(location)
    if path.is_dir():
        for candidate in RUN_CHECKPOINTS:
            if (path / candidate).is_file():
                return path / candidate
        raise ConfigError(f"{key}: {path} is a directory without {', '.join(RUN_CHECKPOINTS)}")
    if not path.is_file():
        raise ConfigError(f"{key}: {path} not found (expected a kdlab run directory or checkpoint file)")
    return path


def load_weights(model: nn.Module, location: str | Path, key: str) -> None:
    """Load a kdlab checkpoint's student (or a plain state_dict file) into ``model``."""
    path = checkpoint_path(location, key)
    state = checkpoint.load(path)
    weights = checkpoint.student_state(state["model"]) if isinstance(state.get("model"), dict) else state
    fit_weights(model, weights, f"{key}: {path}")


def fit_weights(model: nn.Module, weights: dict[str, Any], where: str) -> None:
    """``model.load_state_dict(weights)``, a mismatch as one line starting with ``where``."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ConfigError(f"{where} does not fit {type(model).__name__}: {checkpoint.mismatch_reason(exc)}"
                          ) from None


def load_student(state: dict[str, Any], network: nn.Module, where: str = "checkpoint") -> nn.Module:
    """``network`` holding a checkpoint's student; a BatchEnsemble student is merged into it."""
    weights = checkpoint.student_state(state["model"])
    offsets = [v for k, v in weights.items() if k.endswith("r_offset")]
    if offsets:
        ensemble = BatchEnsemble(network, offsets[0].shape[0])
        fit_weights(ensemble, weights, where)
        return merge_batchensemble(ensemble)
    fit_weights(network, weights, where)
    return network


@dataclass
class SavedModel:
    """A model read back from a checkpoint, with the run config and data it was trained with."""

    path: Path
    state: dict[str, Any]
    config: RunConfig
    data: DataBundle
    model: nn.Module
    architecture: str


def load_saved_model(location: str | Path, overrides: Sequence[str] = (), *, device: str | None = None,
                     model: str = "student") -> SavedModel:
    """The model ``model`` of a checkpoint or run directory, in eval mode, on ``device`` (default: the
    run's ``train.device``): ``student`` (a BatchEnsemble merged), or a model the method evaluates
    beside it (``peer1``, ... of ``dml``), read from the whole distiller the checkpoint holds."""
    path = checkpoint_path(location, "checkpoint")
    state = checkpoint.load(path)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise checkpoint.CheckpointError(f"{path}: not a kdlab checkpoint (no config or model)")
    config = validate(apply_overrides(copy.deepcopy(state["config"]), overrides), source=str(path))
    if device is not None:
        config.train.device = device
    target = resolve_device(config.train.device)
    data = build_data_for(config, target)
    config.student.checkpoint = None
    if model == "student":
        network = load_student(state, build_network(config.student, data, "student"), str(path))
        return SavedModel(path, state, config, data, network.to(target).eval(), config.student.name)
    distiller = build_distiller_for(config, data)
    others = distiller.eval_models()
    if model not in others:
        raise ConfigError(f"--model: {path} holds no model {model!r}; models: "
                          f"{', '.join(['student', *others])}")
    fit_weights(distiller, state["model"], str(path))
    network = others[model]
    return SavedModel(path, state, config, data, network.to(target).eval(), type(network).__name__)


def build_network(config: ModelConfig, data: DataBundle, key: str) -> nn.Module:
    try:
        model = build_model(config.name, data.num_classes, pretrained=config.pretrained,
                            in_channels=data.input_shape[0], **config.kwargs)
    except WeightFileError as exc:
        raise ConfigError(f"{key}.pretrained: {exc}") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{key}.name: {exc}") from None
    check_input_shape(model, data.input_shape, f"{key}.name")
    if config.checkpoint is not None:
        load_weights(model, config.checkpoint, f"{key}.checkpoint")
    if config.freeze_bn:
        freeze_batchnorm(model)
    return model


def check_input_shape(model: nn.Module, shape: Sequence[int], key: str) -> None:
    """One forward of two zero images of the data's ``shape``: a model that cannot take them (too
    small for its pooling, say) is refused before training instead of failing at its first step."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *shape))
    except RuntimeError as exc:
        raise ConfigError(f"{key}: {type(model).__name__} cannot take the data's {'x'.join(map(str, shape))} "
                          f"images ({str(exc).splitlines()[0][:160]}); change data.image_size or the model"
                          ) from None
    finally:
        model.train(was_training)


def normalization(config: ModelConfig | None, data: DataBundle) -> tuple[list[float], list[float]]:
    if config is None or config.mean is None:
        return list(data.mean), list(data.std)
    if config.std is None:
        raise ConfigError("a model's 'mean' needs its 'std' too")
    channels = data.input_shape[0]
    if len(config.mean) != channels or len(config.std) != channels:
        raise ConfigError(f"a model's mean/std have {len(config.mean)}/{len(config.std)} values for the "
                          f"data's {channels} channels")
    return config.mean, config.std


def build_teacher_ensemble(configs: Sequence[ModelConfig], data: DataBundle) -> TeacherEnsemble:
    """The ``teachers`` list as one frozen ensemble; every member must expect the same normalization."""
    if len({repr(normalization(c, data)) for c in configs}) > 1:
        raise ConfigError("teachers: every teacher must expect the same input normalization (mean/std)")
    models = []
    for i, member in enumerate(configs):
        if member.checkpoint is None and not member.pretrained:
            raise ConfigError(f"teachers.{i}.checkpoint: a teacher needs trained weights; train one with "
                              "method.name=ce and pass its run directory here")
        models.append(build_network(member, data, f"teachers.{i}"))
    return TeacherEnsemble(models)


def make_run_dir(config: RunConfig) -> Path:
    name = config.name or f"{config.method.name}-{config.student.name.replace(':', '_')}-" \
                          f"{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.out_dir) / name
    if (run_dir / "last.pt").exists():
        raise ConfigError(f"name: run directory {run_dir} already holds a run; resume it with --resume "
                          f"{run_dir}, or choose another name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out_dir: cannot make the run directory {run_dir} ({exc.strerror})") from None
    return run_dir


def check_resumable(config: RunConfig, run_dir: Path) -> Path:
    """The run's ``last.pt``, once ``config`` is known to keep everything a resumed run must keep
    (``RESUME_FIXED``: its data, models, method, stages and seed) as the run's ``config.yaml`` has it."""
    last = run_dir / "last.pt"
    if not last.is_file():
        raise ConfigError(f"--resume: {last} not found; nothing to resume")
    saved = validate(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    change = first_change(saved.model_dump(mode="json"), config.model_dump(mode="json"), RESUME_FIXED,
                          RESUME_FREE)
    if change is not None:
        key, old, new = change
        raise ConfigError(f"{key}: a resumed run cannot change it (the run has {old!r}, this config "
                          f"{new!r}); start a new run to train with it")
    return last


@contextlib.contextmanager
def setup_mistakes() -> Iterator[None]:
    """A ``ValueError`` while a run is being set up (a cache too short for the run, say) comes from its
    config: re-raised as a one-line ``ConfigError`` (checkpoint errors stay as they are)."""
    try:
        yield
    except (ConfigError, checkpoint.CheckpointError):
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def loader_workers(setting: int | str) -> int:
    """``data.num_workers``: a count, or ``auto``: this node's cores over its ranks, 1 to 8."""
    if setting != "auto":
        return int(setting)
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // ranks))


def build_data_for(config: RunConfig, device: torch.device) -> DataBundle:
    """The run's data for this rank; under DDP rank 0 reads (and fills the decode cache) first."""
    d = config.data

    def build() -> DataBundle:
        try:
            return build_data(
                d.name, d.root, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
                val_fraction=d.val_fraction, split_seed=d.split_seed, subset=d.subset, augment=d.augment,
                device=device, seed=config.train.seed, rank=distributed.rank(),
                world_size=distributed.world_size(), num_workers=loader_workers(d.num_workers),
                device_resident=d.device_resident, image_size=d.image_size, mean=d.mean, std=d.std,
                **corruption_specs(d), **d.options,
            )
        except CorruptionError as exc:
            raise ConfigError(str(exc)) from None
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"data: {exc}") from None

    if distributed.is_main():
        data = build()
        distributed.barrier()
        return data
    distributed.barrier()
    return build()


def build_distiller_for(config: RunConfig, data: DataBundle, *, student: nn.Module | None = None,
                        teacher: nn.Module | None = None) -> Distiller:
    """The run's distiller: student, teacher(s) and method from the config (given modules win)."""
    student = student if student is not None else build_network(config.student, data, "student")
    if teacher is None and config.teacher is not None:
        if config.teacher.checkpoint is None and not config.teacher.pretrained:
            raise ConfigError("teacher.checkpoint: a teacher needs trained weights; train one with "
                              "method.name=ce and pass its run directory here")
        teacher = build_network(config.teacher, data, "teacher")
    if teacher is None and config.teachers:
        teacher = build_teacher_ensemble(config.teachers, data)
    context = DistillContext(
        num_classes=data.num_classes, input_shape=tuple(data.input_shape),
        num_train_samples=data.train.num_samples, student_name=config.student.name,
        teacher_name=config.teacher.name if config.teacher else "+".join(t.name for t in config.teachers),
    )
    teacher_config = config.teacher or next(iter(config.teachers), None)
    return build_distiller(config.method, student, teacher, context,
                           student_norm=normalization(config.student, data),
                           teacher_norm=normalization(teacher_config, data))


def attach_teacher_cache(config: RunConfig, data: DataBundle, distiller: Distiller,
                         device: torch.device) -> TeacherCacheReplay | None:
    """With ``teacher_cache`` set, make the training source replay the cache (checked against the run)."""
    if config.teacher_cache is None:
        return None
    try:
        cache = config.teacher_cache
        replay = TeacherCacheReplay(cache.path, device, cycle=cache.cycle, features=cache.features)
        replay.check(run_signature(config, data, distiller))
    except CacheError as exc:
        raise ConfigError(str(exc)) from None
    data.train.set_replay(replay)
    return replay


def train(
    config: RunConfig,
    *,
    resume: str | Path | None = None,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    callbacks: Sequence[Callback] = (),
    write: bool = True,
) -> RunResult:
    """Train one run. ``student``/``teacher`` modules, when given, replace those built from the config.

    Everything is checked before anything is written: a refused resume leaves the run as it was."""
    with setup_mistakes():
        device = distributed.init_from_env(resolve_device(config.train.device).type) or \
            resolve_device(config.train.device)
        seed_everything(config.train.seed, config.train.deterministic)
        data = build_data_for(config, device)
        distiller = build_distiller_for(config, data, student=student, teacher=teacher)
        replay = attach_teacher_cache(config, data, distiller, device)
        resume_from = check_resumable(config, Path(resume)) if resume is not None else None

        run_dir: Path | None = None
        if write:
            if resume is not None:
                run_dir = Path(resume)
            elif distributed.is_main():
                run_dir = make_run_dir(config)
            run_dir = distributed.broadcast_object(run_dir)

        averager = build_averager(config.averaging, bn_source=data.train)
        if averager is not None:
            callbacks = [*callbacks, averager]
        stages = plan_stages(config, None if config.stages else distiller.default_stages(config))
        if replay is not None:
            clock = StageClock(stages, len(data.train))
            replay.require(clock.data_epoch(clock.total_steps - 1)[0] + 1)
        trainer = Trainer(distiller, data.train, data.val, stages=stages, train=config.train,
                          device=device, run_dir=run_dir, callbacks=callbacks,
                          config=config.model_dump(mode="json"),
                          select_model=MODEL_NAME if averager is not None else distiller.select_model,
                          class_breakdown=class_breakdown(config, data))
        if averager is not None:
            averager.check_budget(trainer)
        if resume_from is not None:
            trainer.load_checkpoint(resume_from)
        else:
            trainer.enter_stage(0)
    if run_dir is not None and distributed.is_main():
        (run_dir / "config.yaml").write_text(dump_config(config))
        save_noisy_labels(data, run_dir)
    started = time.perf_counter()
    final_val = trainer.fit()
    wall = time.perf_counter() - started
    summary = summarize(trainer, data, final_val, wall)
    summary.update(corruption_summary(data, trainer.class_breakdown))
    if averager is not None:
        summary["averaging"] = averager.describe()
    if replay is not None:
        summary["teacher_cache"] = replay.describe(trainer.epoch)
    if run_dir is not None and distributed.is_main():
        summary["checkpoint"] = save_result_checkpoint(trainer, run_dir, averager)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return RunResult(run_dir, summary, trainer.distiller.student)


def save_result_checkpoint(trainer: Trainer, run_dir: Path, averager: AveragingStrategy | None) -> str:
    """Write ``averaged.pt`` when the run's result is the final average; the name of the result's file."""
    if averager is not None and averager.report == "last":
        model = trainer.eval_models()[MODEL_NAME]
        weights = {f"student.{k}": v for k, v in model.state_dict().items()}
        state = {"model": weights, "config": trainer.config, "step": trainer.step,
                 "averaging": averager.describe(), "format": CHECKPOINT_FORMAT}
        checkpoint.save_atomic(state, run_dir / "averaged.pt")
    return next(name for name in RUN_CHECKPOINTS if (run_dir / name).is_file())


def summarize(trainer: Trainer, data: DataBundle, final_val: dict[str, dict[str, float]],
              wall: float) -> dict[str, Any]:
    """Test metrics of the last and of the validation-selected model, with the run's costs; for a method
    whose evaluations compare against a reference (a teacher ensemble's mean prediction), that
    reference's own test metrics as ``reference_test``."""
    models = trainer.eval_models()
    selected = trainer.select_model
    test_last = trainer.evaluate(models[selected], data.test)
    test_selected = test_last
    if trainer.best is not None and trainer.best["step"] != trainer.step:
        model = models[selected]
        current = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(checkpoint.student_state(trainer.best_state_dict()))
        test_selected = trainer.evaluate(model, data.test)
        model.load_state_dict(current)
    student = trainer.distiller.student
    summary = {
        "method": type(trainer.distiller).__name__,
        "model": selected,
        "steps": trainer.step,
        "epochs": round(trainer.epoch, 4),
        "val_last": final_val.get(selected),
        "selected": trainer.best,
        "test_last": test_last,
        "test_selected": test_selected,
        "student_params": sum(p.numel() for p in student.parameters()),
        "extra_params": trainer.distiller.extra_parameter_count(),
        "train_time_s": round(trainer.train_time, 3),
        "wall_time_s": round(wall, 3),
        "img_per_s": round(trainer.images_per_second, 1),
        "precision": trainer.precision.name,
        "world_size": distributed.world_size(),
    }
    reference = trainer.distiller.eval_reference()
    if reference is not None:
        summary["reference_test"] = evaluate_logits(reference, data.test, trainer.precision, trainer.device,
                                                    trainer.memory_format, breakdown=trainer.class_breakdown)
    return summary
