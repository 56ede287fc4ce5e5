"""The Trainer: runs any Distiller. It knows methods only through the Distiller interface.

It owns optimization (optimizer, per-step schedule, precision and grad scaling, clipping, gradient
accumulation: :mod:`kdlab.engine.accumulation`), the loop over an epoch- or step-based budget,
evaluation on the validation split, checkpointing (``last.pt`` every epoch, ``best.pt`` by the
validation metric) and exact resume, logging, DDP and callbacks.
It never sees the test split: the run layer evaluates test once training is over.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from kdlab.config.schema import TIMM_PREFIX, OptimConfig, ScheduleConfig, TeacherFastConfig, TrainConfig
from kdlab.core import checkpoint, distributed
from kdlab.core.errors import ConfigError, NonFiniteLossError
from kdlab.data.batch import Batch, BatchSource
from kdlab.engine.accumulation import Accumulation
from kdlab.engine.cadence import eval_interval
from kdlab.engine.callbacks import Callback
from kdlab.engine.finite import refuse_non_finite
from kdlab.engine.freeze import StageFreezer, check_paths
from kdlab.engine.logger import MetricsLogger
from kdlab.engine.metrics import ClassBreakdown, better, evaluate_model
from kdlab.engine.optim import build_optimizer, build_scheduler
from kdlab.engine.precision import resolve_precision
from kdlab.engine.progress import Console
from kdlab.engine.selection import ResultSelection, choose_selection
from kdlab.engine.stages import Stage, StageClock
from kdlab.engine.summary_csv import write_summary_csv
from kdlab.engine.sync_batchnorm import sync_batchnorm
from kdlab.engine.teacher_fast import teacher_plan
from kdlab.engine.timm_optim import check_timm_optimizer
from kdlab.methods.base import Distiller, DistillOutput, StageInfo, StepContext, weighted_sum

CHECKPOINT_FORMAT = 1


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak resident set size on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """Trains ``distiller`` on ``train_data``, evaluating on ``val_data`` (if any) as configured."""

    def __init__(
        self,
        distiller: Distiller,
        train_data: BatchSource,
        val_data: BatchSource | None,
        *,
        train: TrainConfig,
        device: torch.device,
        stages: Sequence[Stage] | None = None,
        optim: OptimConfig | None = None,
        schedule: ScheduleConfig | None = None,
        run_dir: Path | None = None,
        callbacks: Sequence[Callback] = (),
        config: dict[str, Any] | None = None,
        selection: ResultSelection | None = None,
        class_breakdown: ClassBreakdown | None = None,
        teacher_fast: TeacherFastConfig | None = None,
    ) -> None:
        """``stages`` is the run's plan; without it, one stage from ``optim``, ``schedule`` and the
        budget in ``train`` (``epochs`` or ``steps``). ``class_breakdown`` adds per-class (and per-group)
        top-1 to every evaluation. ``selection`` is the run's result (default: an averaging callback's
        model, else the method's deployable model; see :mod:`kdlab.engine.selection`). ``teacher_fast``
        is the teacher's fast path (default: on; :mod:`kdlab.models.fast`), applied once here, after the
        method registered its feature taps; :attr:`teacher_notes` says what it did."""
        self.cfg = train
        self.device = device
        self.train_data = train_data
        self.val_data = val_data
        self.run_dir = run_dir
        self.callbacks = list(callbacks)
        self.config = config or {}
        self.selection = selection or choose_selection(distiller.select_model, callbacks)
        self.class_breakdown = class_breakdown
        self.precision = resolve_precision(train.precision, device)
        self.distiller = distiller.place(device)
        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        if train.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        if train.sync_batchnorm and distributed.world_size() > 1:
            sync_batchnorm(self.distiller, device)
        if train.compile:
            self.distiller.student.compile(mode=train.compile_mode)
        self.teacher_notes: list[str] = []
        if self.distiller.frozen is not None:
            plan = teacher_plan(teacher_fast or TeacherFastConfig(), train, self.precision)
            self.teacher_notes = self.distiller.frozen.speed_up(plan, self.distiller.context.input_shape)

        if stages is None:
            stages = [Stage("train", optim or OptimConfig(), schedule or ScheduleConfig(), train.epochs,
                            train.steps)]
        self.stages = list(stages)
        if len(train_data) == 0:
            raise ConfigError("data.batch_size: the training split yields no batch; lower data.batch_size "
                              "or use more data")
        self.accumulation = Accumulation(len(train_data), train.accumulate_grad_batches)
        self.steps_per_epoch = self.accumulation.steps_per_epoch
        self.clock = StageClock(self.stages, self.steps_per_epoch)
        self.total_steps = self.clock.total_steps
        self.freezer = StageFreezer(self.distiller)
        self.stage_weights = [self._stage_weights(i, stage) for i, stage in enumerate(self.stages)]
        self.stage_infos = [self._stage_info(i, stage) for i, stage in enumerate(self.stages)]
        for i, stage in enumerate(self.stages):
            check_paths(self.distiller, stage.freeze + (stage.train_only or ()), f"stages.{i}")
            if not self.freezer.trainable(stage.freeze, stage.train_only):
                raise ConfigError(f"stages.{i}: freeze / train_only leave stage {stage.name!r} no parameter "
                                  "to train")
            if stage.optim.name.startswith(TIMM_PREFIX):
                check_timm_optimizer(stage.optim.name, "optim.name" if len(self.stages) == 1
                                     else f"stages.{i}.optim.name")
        self.context: StepContext | None = None
        self.stage_index = -1
        self.model: nn.Module = distiller

        self.step = 0
        self.best: dict[str, Any] | None = None
        self.last_eval: dict[str, dict[str, float]] = {}
        self.last_eval_step = -1
        self._best_state: dict[str, Tensor] = {}
        self.should_stop = False
        self.checked_losses: dict[str, Tensor] = {}
        self.train_time = 0.0
        self.images_seen = 0
        self.is_main = distributed.is_main()
        for callback in self.callbacks:
            callback.check(self)
        self.logger = MetricsLogger(run_dir if self.is_main else None, tensorboard=train.tensorboard)
        self.console = Console(bar=train.progress, show=self.is_main)

    def _stage_weights(self, index: int, stage: Stage) -> Mapping[str, float]:
        """The loss weights of stage ``index``: the method's configured weights, then the stage's."""
        base = self.distiller.weights
        unknown = set(stage.weights or {}) - set(base)
        if unknown:
            raise ConfigError(f"stages.{index}.weights: unknown loss term {sorted(unknown)[0]!r}; "
                              f"terms: {', '.join(base)}")
        weights = {**base, **(stage.weights or {})}
        if not any(weights.values()):
            key = f"stages.{index}.weights" if stage.weights else "method.weights"
            raise ConfigError(f"{key}: every loss term of {type(self.distiller).__name__} has weight 0 in "
                              f"stage {stage.name!r}; give at least one term a positive weight")
        return MappingProxyType(weights)

    def _stage_info(self, index: int, stage: Stage) -> StageInfo:
        """Stage ``index`` as the method sees it, its ``params`` validated by the method."""
        params = self.distiller.stage_params(stage.params, f"stages.{index}.params")
        epochs = stage.num_steps(self.steps_per_epoch) / self.steps_per_epoch
        return StageInfo(stage.name, index, epochs, params)

    def step_context(self) -> StepContext:
        """The context of the step about to run (the frozen value the method's forward receives)."""
        return StepContext(self.stage_infos[self.stage_index], self.stage_epoch, self.step,
                           self.stage_weights[self.stage_index])

    @property
    def epoch(self) -> float:
        """Epochs of training done in the whole run (``step`` counts optimizer steps)."""
        return self.step / self.steps_per_epoch

    @property
    def stage(self) -> Stage:
        return self.stages[self.stage_index]

    @property
    def stage_epoch(self) -> float:
        """Epochs done in the current stage (what stage schedules and warm-ups count)."""
        return (self.step - self.clock.starts[self.stage_index]) / self.steps_per_epoch

    def enter_stage(self, index: int) -> None:
        """Freeze, re-weight and build the optimizer, schedule, scaler and DDP wrapper of stage ``index``."""
        self.stage_index = index
        stage = self.stages[index]
        self.freezer.apply(stage.freeze, stage.train_only)
        if stage.step_based:
            steps_per_unit, total_units = 1, float(stage.steps)
        else:
            steps_per_unit, total_units = self.steps_per_epoch, float(stage.epochs)
        self.optimizer = build_optimizer(self.distiller, stage.optim)
        self.scheduler = build_scheduler(self.optimizer, stage.schedule, steps_per_unit, total_units)
        self.scaler = self.precision.grad_scaler()
        self.params = [p for p in self.distiller.parameters() if p.requires_grad]
        self.model = self.distiller
        if distributed.is_enabled():
            ids = [self.device.index] if self.device.type == "cuda" else None
            some_unused = len(self.stages) > 1 or not all(self.stage_weights[index].values())
            self.model = DistributedDataParallel(self.distiller, device_ids=ids,
                                                 find_unused_parameters=some_unused)
        for callback in self.callbacks:
            callback.on_stage_start(self)

    # ------------------------------------------------------------------ training
    def fit(self, resume_from: Path | None = None) -> dict[str, dict[str, float]]:
        """Train to the end of the budget (or until a callback stops it); returns the last evaluation.

        Resumes from ``resume_from`` when given; otherwise starts at stage 0, unless the caller has
        already entered a stage or loaded a checkpoint."""
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        elif self.stage_index < 0:
            self.enter_stage(0)
        if self.is_main and self.run_dir is not None:
            checkpoint.remove_stale_temps(self.run_dir)
        self.logger.begin(self.step)
        for callback in self.callbacks:
            callback.on_fit_start(self)
        self.console.start(self.total_steps, self.step)
        try:
            while self.step < self.total_steps and not self.should_stop:
                index = self.clock.stage_of(self.step)
                if index != self.stage_index:
                    self.enter_stage(index)
                self._run_epoch()
        finally:
            self.console.close()
        if self.last_eval_step != self.step:
            self._evaluate_and_save()
        for callback in self.callbacks:
            callback.on_fit_end(self)
        self.logger.close()
        return self.last_eval

    def _run_epoch(self) -> None:
        """Up to one pass over the data, ending early at the end of the stage; one optimizer step per
        group of ``train.accumulate_grad_batches`` batches."""
        epoch, skip = self.clock.data_epoch(self.step)
        first = self.accumulation.first_batch(skip)
        stage_end = self.clock.end_of(self.stage_index)
        eval_every = eval_interval(self.stage, self.cfg.eval_every, self.steps_per_epoch)
        self.train_data.set_epoch(epoch)
        self.freezer.train()
        window_start, window_images = time.perf_counter(), 0
        started = time.perf_counter()
        group: list[tuple[DistillOutput, Tensor]] = []
        group_images = 0
        for index, batch in enumerate(self.train_data):
            if index < first:
                started = time.perf_counter()
                continue
            position, size = self.accumulation.group(index)
            group.append(self._backward(batch, position, size))
            group_images += batch.targets.numel()
            if position < size - 1:
                continue
            output, loss = self._optimizer_step(group)
            self.step += 1
            images = group_images * distributed.world_size()
            group, group_images = [], 0
            window_images += images
            self.images_seen += images
            self.console.advance(self.epoch)
            for callback in self.callbacks:
                callback.on_step_end(self)
            if self.step % self.cfg.log_every == 0 or self.device.type == "cpu":
                self._check_finite(output, loss)
            if self.step % self.cfg.log_every == 0:
                elapsed = time.perf_counter() - window_start
                self._log_train(output, loss, window_images / max(elapsed, 1e-9))
                window_start, window_images = time.perf_counter(), 0
            self.train_time += time.perf_counter() - started
            local = self.step - self.clock.starts[self.stage_index]
            if self.stage.step_based and local % eval_every == 0 and self.step < stage_end:
                self._evaluate_and_save()
            if self.step >= stage_end or self.should_stop:
                break
            started = time.perf_counter()
        local = self.step - self.clock.starts[self.stage_index]
        stage_done = self.step >= stage_end or self.should_stop
        if local % self.steps_per_epoch == 0 or stage_done:
            for callback in self.callbacks:
                callback.on_epoch_end(self)
        if stage_done:
            self._evaluate_and_save()
        elif not self.stage.step_based and local % self.steps_per_epoch == 0:
            if (local // self.steps_per_epoch) % eval_every == 0:
                self._evaluate_and_save()
            else:
                self.save_checkpoint()

    def _backward(self, batch: Batch, position: int, size: int) -> tuple[DistillOutput, Tensor]:
        """Forward and backward of the batch at ``position`` in a group of ``size``, its loss divided by
        ``size``; under DDP the gradients are all-reduced on the group's last batch only."""
        if self.cfg.channels_last and batch.inputs.dim() == 4:
            batch = batch._replace(inputs=batch.inputs.contiguous(memory_format=self.memory_format))
        self.context = self.step_context()
        if position == 0:
            self.optimizer.zero_grad(set_to_none=True)
        deferred = position < size - 1 and isinstance(self.model, DistributedDataParallel)
        with self.model.no_sync() if deferred else contextlib.nullcontext():
            with self.precision.autocast():
                output: DistillOutput = self.model(batch, self.context)
            loss = weighted_sum(output.losses, self.context.weights)
            self.scaler.scale(loss / size).backward()
        return DistillOutput({k: v.detach() for k, v in output.losses.items()}, output.logits.detach()), \
            loss.detach()

    def _optimizer_step(self, group: list[tuple[DistillOutput, Tensor]]) -> tuple[DistillOutput, Tensor]:
        """Clip, step the optimizer, grad scaler and schedule once for the group; returns its mean loss
        terms (with the last batch's logits) and mean loss."""
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if len(group) == 1:
            return group[0]
        outputs = [out for out, _ in group]
        terms = {k: torch.stack([out.losses[k] for out in outputs]).mean() for k in outputs[-1].losses}
        return DistillOutput(terms, outputs[-1].logits), torch.stack([loss for _, loss in group]).mean()

    def _check_finite(self, output: DistillOutput, loss: Tensor) -> None:
        self.checked_losses = output.losses
        if bool(torch.isfinite(loss.detach())):
            return
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in output.losses.items())
        raise NonFiniteLossError(
            f"loss became {float(loss.detach()):.4g} at step {self.step} (epoch {self.epoch:.2f}); "
            f"terms: {terms}. Lower optim.lr, set train.grad_clip, or use train.precision=fp32"
        )

    def _log_train(self, output: DistillOutput, loss: Tensor, images_per_s: float) -> None:
        terms = {k: float(v.detach()) for k, v in output.losses.items()}
        total = float(loss.detach())
        lr = self.optimizer.param_groups[0]["lr"]
        self.logger.log("train", self.step, stage=self.stage.name, epoch=round(self.epoch, 4), lr=lr,
                        loss=total, **terms, img_per_s=round(images_per_s, 1),
                        peak_mem_mb=round(peak_memory_mb(self.device), 1))
        self.console.train_line(step=self.step, epoch=self.epoch, lr=lr, loss=total, terms=terms,
                                images_per_s=images_per_s)

    # ------------------------------------------------------------------ evaluation
    def eval_models(self) -> dict[str, nn.Module]:
        models: dict[str, nn.Module] = {"student": self.distiller.student, **self.distiller.eval_models()}
        for callback in self.callbacks:
            models.update(callback.eval_models(self))
        return models

    def evaluate(self, model: nn.Module, data: BatchSource) -> dict[str, float]:
        """Top-1, NLL and ECE of ``model`` on ``data`` (reduced across DDP ranks), and agreement and KL
        with the distiller's ``eval_reference()`` when it has one."""
        return evaluate_model(model, data, self.precision, self.memory_format,
                              reference=self.distiller.eval_reference(), breakdown=self.class_breakdown,
                              top_k=self.cfg.top_k)

    def _evaluate_and_save(self) -> None:
        results: dict[str, dict[str, float]] = {}
        if self.val_data is not None:
            for name, model in self.eval_models().items():
                results[name] = self.evaluate(model, self.val_data)
                self.logger.log("eval", self.step, stage=self.stage.name, split="val", model=name,
                                epoch=round(self.epoch, 4), **results[name])
                r = results[name]
                self.console.message(f"step {self.step} epoch {self.epoch:.2f} val {name}: top1 "
                                     f"{r['top1']:.2f} nll {r['nll']:.4f} ece {r['ece']:.2f}")
            for callback in self.callbacks:
                callback.on_evaluate(self, results)
            self._update_best(results)
            if self.is_main and self.run_dir is not None:
                write_summary_csv(self.run_dir)
        diagnostics = self.distiller.diagnostics()
        if diagnostics:
            self.logger.log("method", self.step, stage=self.stage.name, epoch=round(self.epoch, 4),
                            **diagnostics)
        self.last_eval, self.last_eval_step = results, self.step
        self.save_checkpoint()

    def _update_best(self, results: dict[str, dict[str, float]]) -> None:
        """Track the best validation score of the selected model, in the final stage only."""
        name = self.selection.model
        if name not in results or self.stage_index != len(self.stages) - 1:
            return
        metric = self.cfg.select_metric
        value = results[name][metric]
        if not better(metric, value, None if self.best is None else self.best["value"]):
            return
        self.best = {"metric": metric, "value": value, "step": self.step, "epoch": round(self.epoch, 4),
                     "model": name, "val": results[name]}
        if self.run_dir is None:
            self._best_state = {k: v.detach().clone() for k, v in self.selected_state_dict().items()}
        elif self.is_main:
            state = {"model": self.selected_state_dict(), "config": self.config, "best": self.best,
                     "step": self.step, "format": CHECKPOINT_FORMAT}
            checkpoint.save_atomic(state, self.run_dir / "best.pt")

    def best_state_dict(self) -> dict[str, Tensor]:
        """The selected model's state at its best validation score (from ``best.pt`` or memory)."""
        if self.run_dir is None:
            return self._best_state
        return checkpoint.load(self.run_dir / "best.pt", map_location=self.device)["model"]

    def selected_state_dict(self) -> dict[str, Tensor]:
        """The state of the result's model (``selection.model``), keyed like the distiller's student."""
        if self.selection.model == "student":
            return self.distiller.state_dict()
        return {f"student.{k}": v for k, v in self.result_model().state_dict().items()}

    @property
    def selected_is_last(self) -> bool:
        """Whether the best validated state is the current one (or nothing was validated)."""
        return self.best is None or self.best["step"] == self.step

    def result_model(self) -> nn.Module:
        """The result's model in its current (last) state."""
        return self.eval_models()[self.selection.model]

    @contextlib.contextmanager
    def selected_model(self) -> Iterator[nn.Module]:
        """The result's model holding its weights at the best validation score (``best.pt``) for the
        block, its current weights restored after; the model as it is when that score is its current
        state or nothing was validated."""
        model = self.result_model()
        if self.selected_is_last:
            yield model
            return
        current = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(checkpoint.student_state(self.best_state_dict()))
        try:
            yield model
        finally:
            model.load_state_dict(current)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "step": self.step,
            "stage": self.stage_index,
            "best": self.best,
            "train_time": self.train_time,
            "images_seen": self.images_seen,
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
            "config": self.config,
        }

    def save_checkpoint(self) -> None:
        """Write ``last.pt``, unless its weights or optimizer state are not finite (then raise, keeping the
        previous one)."""
        if self.run_dir is not None:
            state = self.checkpoint_state()
            refuse_non_finite(state, self.step, self.checked_losses)
            if self.is_main:
                checkpoint.save_atomic(state, self.run_dir / "last.pt")
        distributed.barrier()

    def load_checkpoint(self, path: Path) -> None:
        state = checkpoint.load(path, map_location=self.device)
        if state.get("format") != CHECKPOINT_FORMAT or "optimizer" not in state:
            raise checkpoint.CheckpointError(f"{path}: not a resumable kdlab checkpoint")
        checkpoint.check_resumable(state, path)
        try:
            self.distiller.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise checkpoint.CheckpointError(f"{path}: its weights do not fit this run's models "
                                             f"({checkpoint.mismatch_reason(exc)})") from None
        self.step = state["step"]
        if self.step > self.total_steps:
            raise checkpoint.CheckpointError(
                f"{path}: the run is at step {self.step}, past this config's budget of {self.total_steps}")
        self.enter_stage(self.clock.stage_of(self.step))
        if state["stage"] == self.stage_index:
            self._restore_optimization(state)
        checkpoint.set_rng_state(state["rng"])
        self.best = state["best"]
        self.train_time = state["train_time"]
        self.images_seen = state["images_seen"]
        for callback in self.callbacks:
            callback.load_state_dict(state["callbacks"].get(callback.name, {}))

    def _restore_optimization(self, state: dict[str, Any]) -> None:
        """The optimizer's, schedule's and grad scaler's state from ``state``, under this config's
        hyper-parameters: a resume that changes ``optim`` or ``schedule`` trains with the new values
        (the restored state alone would keep the old ones while ``config.yaml`` says the new)."""
        fresh = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        base_lrs = list(self.scheduler.base_lrs)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.scheduler.base_lrs = base_lrs
        step = self.scheduler.last_epoch
        factors = self.scheduler.lr_lambdas
        rates = [base * factor(step) for base, factor in zip(base_lrs, factors, strict=True)]
        for group, settings, rate in zip(self.optimizer.param_groups, fresh, rates, strict=True):
            group.update(settings, lr=rate)

    @property
    def images_per_second(self) -> float:
        """Training throughput over the whole run so far (all ranks), excluding evaluation."""
        return self.images_seen / self.train_time if self.train_time > 0 else 0.0
