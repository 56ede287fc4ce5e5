"""What a trained model needs to know of its run's data, kept beside the run as ``RUN_DIR/data.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kdlab.data.errors import DatasetNotFoundError

FACTS_FILE = "data.json"


@dataclass(frozen=True)
class DataFacts:
    """The classes, the (C, H, W) shape of the inputs and their normalization: enough to rebuild a run's
    model, normalize new images for it and export it without reading its data again."""

    num_classes: int
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, run_dir: Path) -> DataFacts:
        """The facts a run recorded; a run without them (made before kdlab 0.1 recorded them) is one line."""
        path = run_dir / FACTS_FILE
        if not path.is_file():
            raise DatasetNotFoundError(f"{path} not found: the run predates it, and its data were given from "
                                       "Python; pass the data again (kdlab.load_run(RUN_DIR, data=...))")
        raw = json.loads(path.read_text())
        return cls(int(raw["num_classes"]), tuple(raw["classes"]), tuple(raw["input_shape"]),
                   tuple(raw["mean"]), tuple(raw["std"]))
