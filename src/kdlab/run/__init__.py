"""One run from a config: build its parts, train, write its run directory, summarize.

This is what ``kdlab train`` and the Python API call. A run directory holds ``config.yaml`` (the
resolved config), ``metrics.jsonl``, ``last.pt``, ``best.pt`` and, when training ends,
``summary.json`` (and ``averaged.pt`` when the result is a final weight average; see
:mod:`kdlab.engine.selection`). The test split is evaluated only when training has ended.
"""

from kdlab.run.recipe import RunResult, train

__all__ = ["RunResult", "train"]
