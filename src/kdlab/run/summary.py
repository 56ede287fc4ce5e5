"""``summary.json``: the test metrics of the run's result, last and validation-selected, and its costs."""

from __future__ import annotations

from typing import Any

from kdlab.config.schema import RunConfig
from kdlab.core import distributed
from kdlab.data import DataBundle
from kdlab.engine import Trainer
from kdlab.engine.metrics import evaluate_logits
from kdlab.engine.trainer import peak_memory_mb
from kdlab.robustness import corruption_summary


def summarize(config: RunConfig, trainer: Trainer, data: DataBundle, final_val: dict[str, dict[str, float]],
              wall: float) -> dict[str, Any]:
    """Test metrics of the result's model (``trainer.selection``) in its last and its validation-selected
    state (and, when the result is not the online student, a weight average say, the online student's
    last test metrics beside them as ``online_test_last``), the run's costs, what each callback
    reports, and, for a method whose evaluations compare against a reference (a teacher ensemble's mean
    prediction), that reference's test metrics."""
    selection = trainer.selection
    test_last = trainer.evaluate(trainer.result_model(), data.test)
    test_selected = test_last
    if not trainer.selected_is_last:
        with trainer.selected_model() as model:
            test_selected = trainer.evaluate(model, data.test)
    student = trainer.distiller.student
    online = {}
    if selection.model != "student":
        online["online_test_last"] = trainer.evaluate(student, data.test)
    summary: dict[str, Any] = {
        "method": config.method.name,
        "model": selection.model,
        "result": selection.result_key,
        "steps": trainer.step,
        "epochs": round(trainer.epoch, 4),
        "val_last": final_val.get(selection.model),
        "selected": trainer.best,
        "test_last": test_last,
        "test_selected": test_selected,
        **online,
        "student_params": sum(p.numel() for p in student.parameters()),
        "extra_params": trainer.distiller.extra_parameter_count(),
        "train_time_s": round(trainer.train_time, 3),
        "wall_time_s": round(wall, 3),
        "img_per_s": round(trainer.images_per_second, 1),
        "peak_mem_mb": round(peak_memory_mb(trainer.device), 1),
        "precision": trainer.precision.name,
        "world_size": distributed.world_size(),
    }
    reference = trainer.distiller.eval_reference()
    if reference is not None:
        summary["reference_test"] = evaluate_logits(reference, data.test, trainer.precision, trainer.device,
                                                    trainer.memory_format, breakdown=trainer.class_breakdown,
                                                    top_k=config.train.top_k)
    summary.update(corruption_summary(data, trainer.class_breakdown))
    for callback in trainer.callbacks:
        described = callback.describe()
        if described is not None:
            summary[callback.name] = described
    return summary
