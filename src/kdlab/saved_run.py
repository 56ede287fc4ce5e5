"""``kdlab.load_run``: a finished (or interrupted) run read back in Python, to evaluate, predict or export.

    run = kdlab.load_run("runs/kd-resnet8")                    # a run of registered data and models
    run = kdlab.load_run("runs/mine", student=MyNet())         # a student kdlab cannot build by name
    print(run.evaluate(my_test_dataset)["top1"])
    run.export("exported/")

The model is the run's result (``averaged.pt``, else ``best.pt``, else ``last.pt``; see
:mod:`kdlab.engine.selection`), in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.assembly import SavedModel, load_saved_model
from kdlab.config.schema import RunConfig
from kdlab.core.errors import ConfigError
from kdlab.data import BatchSource, DataInput, UserData
from kdlab.data.augment import Normalize
from kdlab.data.user import evaluation_source
from kdlab.engine.metrics import evaluate_model
from kdlab.engine.precision import resolve_precision
from kdlab.export import FORMATS, export_saved


@dataclass
class LoadedRun:
    """A run's result model with its config and what it knows of its data (``facts``)."""

    saved: SavedModel

    @property
    def model(self) -> nn.Module:
        return self.saved.model

    @property
    def config(self) -> RunConfig:
        return self.saved.config

    @property
    def classes(self) -> tuple[str, ...]:
        return self.saved.facts.classes

    def source(self, data: DataInput | None = None, split: str = "test") -> BatchSource:
        """``data`` (a Dataset, DataLoader or ImageFolder folder) as the model sees it, else the run's own
        ``split`` (``test`` or ``val``) when the run's data can be read again."""
        if data is not None:
            return evaluation_source(data, self.saved.facts, self.config.data, self.device)
        if self.saved.data is None:
            raise ConfigError(f"data: the run's data were given from Python ({self.config.data.name}); pass "
                              "the split to evaluate: run.evaluate(dataset)")
        source = self.saved.data.test if split == "test" else self.saved.data.val if split == "val" else None
        if source is None:
            raise ConfigError(f"split: the run has no {split!r} split (splits: test, and val unless "
                              "data.val_fraction is 0)")
        return source

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def evaluate(self, data: DataInput | None = None, split: str = "test") -> dict[str, float]:
        """Top-1, top-k, NLL and ECE of the model on ``data``, or on the run's own ``split``."""
        precision = resolve_precision(self.config.train.precision, self.device)
        return evaluate_model(self.model, self.source(data, split), precision, top_k=self.config.train.top_k)

    def predict(self, images: Tensor) -> Tensor:
        """Logits of uint8 (0..255) or float (0..1) images ``[B, C, H, W]``, normalized as in training."""
        normalize = Normalize(self.saved.facts.mean, self.saved.facts.std, self.device)
        images = images.to(self.device)
        with torch.no_grad():
            return self.model(normalize(images if images.dtype == torch.uint8 else images * 255))

    def export(self, out_dir: str | Path, formats: Sequence[str] = FORMATS, **checks: Any) -> dict[str, Any]:
        """The model as ``kdlab export`` writes it (:func:`kdlab.export.export_student`)."""
        return export_saved(self.saved, out_dir, formats, **checks)


def load_run(location: str | Path, *, student: nn.Module | None = None,
             data: UserData | None = None, device: str | None = None) -> LoadedRun:
    """The result of the run (or checkpoint) at ``location``. ``student``: a module of the student's
    architecture, for a run trained from a module kdlab cannot rebuild by name (its config says
    ``module:CLASS``). ``data``: the run's own splits, when they were given from Python and its ``val``
    split is wanted; to evaluate on any data, pass it to :meth:`LoadedRun.evaluate` instead."""
    if data is not None and not isinstance(data, UserData):
        raise ConfigError("data: pass the run's splits as kdlab.UserData(train, test, val=...); to evaluate "
                          "on a dataset, pass it to run.evaluate(dataset)")
    return LoadedRun(load_saved_model(location, device=device, student=student, data=data))
