"""What a run prints while it trains: a tqdm bar on a terminal, plain timestamped lines anywhere else.

On a terminal (and unless ``train.progress`` is off, as under ``--quiet``) the bar shows the step, the
epoch and the latest losses, and every ``log_every`` steps a train-loss line goes to the scrollback
above it. Written into a pipe or a log file there is no bar: the same lines, each with a timestamp, the
ETA and the throughput, so a log reads like a log.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import timedelta
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger("kdlab")


def stamp() -> str:
    """The local time a plain line starts with."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def eta_text(seconds: float) -> str:
    """``0:01:23``, whole seconds."""
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class Console:
    """The trainer's progress output on rank 0 (``show``); a bar only when ``bar`` is asked for and
    ``stream`` is a terminal."""

    def __init__(self, *, bar: bool, show: bool, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.show = show
        self.want_bar = bar and show and self.stream.isatty()
        self.bar: tqdm | None = None
        self.total = 0
        self.first_step = 0
        self.started = time.perf_counter()

    def start(self, total: int, step: int) -> None:
        """A pass over steps ``step..total`` begins (the ETA counts from here)."""
        self.total, self.first_step, self.started = total, step, time.perf_counter()
        if self.want_bar:
            self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, leave=False,
                            file=self.stream)

    def advance(self, epoch: float) -> None:
        """One step done, at ``epoch`` epochs into the run."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_description(f"epoch {epoch:.2f}", refresh=False)

    def eta(self, step: int) -> float:
        """Seconds left to ``total`` at the pace since :meth:`start`."""
        done = step - self.first_step
        return (time.perf_counter() - self.started) / done * (self.total - step) if done > 0 else 0.0

    def train_line(self, *, step: int, epoch: float, lr: float, loss: float, terms: dict[str, float],
                   images_per_s: float) -> None:
        """The losses at a ``log_every`` step: on the bar and in the scrollback (or as a plain line)."""
        if not self.show:
            return
        shown = " ".join(f"{k}={v:.4f}" for k, v in terms.items())
        text = (f"step {step}/{self.total} epoch {epoch:.2f} lr {lr:.3g} loss {loss:.4f} ({shown}) "
                f"{images_per_s:.0f} img/s eta {eta_text(self.eta(step))}")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", **{k: f"{v:.3f}" for k, v in terms.items()},
                                 refresh=False)
        self.message(text)

    def message(self, text: str) -> None:
        """A line above the bar, or a timestamped log line without one."""
        if not self.show:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            log.info("%s %s", stamp(), text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
