"""The one short banner a run prints when it starts."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from kdlab.config.schema import RunConfig
from kdlab.data import DataBundle
from kdlab.engine import Trainer


def parameter_count(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()):,}"


def banner(config: RunConfig, data: DataBundle, trainer: Trainer, run_dir: Path | None) -> str:
    """Run directory, device and precision, the models with their parameter counts, the split sizes
    and the budget in optimizer steps with the (effective) batch, in one line."""
    distiller = trainer.distiller
    models = f"student {config.student.name} ({parameter_count(distiller.student)} params)"
    if distiller.teacher is not None:
        name = config.teacher.name if config.teacher else "+".join(t.name for t in config.teachers)
        models += f" from teacher {name} ({parameter_count(distiller.teacher)} params)"
    sizes = "/".join(str(s.num_samples) if s is not None else "0" for s in (data.train, data.val, data.test))
    epochs = trainer.total_steps / trainer.steps_per_epoch
    size, every = config.data.batch_size, config.train.accumulate_grad_batches
    batch = f"batch {size}" if every == 1 else f"batch {every * size} ({every} x {size} accumulated)"
    return (f"kdlab: run {run_dir or '(not written)'} | {config.method.name} on {trainer.device.type}, "
            f"{trainer.precision.name} | {models} | {config.data.name} train/val/test {sizes} | "
            f"{trainer.total_steps} steps ({epochs:.3g} epochs) of {batch}")
