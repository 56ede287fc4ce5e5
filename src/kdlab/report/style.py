"""How a report tells methods apart: a colour and a marker per method, distinct for as many methods as a
study has (matplotlib's default cycle repeats after 10), and when a loss axis needs a log scale."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib import colormaps

#: 20 colours: tab20's dark shades, then its light ones, so the first ten are the most distinct
COLORS = [colormaps["tab20"](i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
#: markers cycled with a period coprime to the colours', so colour and marker together stay unique
MARKERS = "osD^vP*Xh<>p"
#: the ratio of the largest to the smallest positive value beyond which an axis is log-scaled
LOG_SPAN = 100.0


def method_style(index: int) -> dict[str, Any]:
    """Colour, marker and line style of the ``index``-th method of a plot: unique for 20 x 12 methods."""
    return {"color": COLORS[index % len(COLORS)], "marker": MARKERS[index % len(MARKERS)],
            "linestyle": "-" if index < len(COLORS) else "--"}


def wants_log_scale(values: Sequence[float]) -> bool:
    """Whether positive ``values`` span more than ``LOG_SPAN`` (one large loss would squash the rest)."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) > LOG_SPAN
