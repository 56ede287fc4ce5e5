"""Progress output (a bar on a terminal only, plain timestamped lines elsewhere) and the default
evaluation interval of step budgets."""

import io
import logging
import re

from kdlab.config import load_config
from kdlab.config.schema import OptimConfig, ScheduleConfig
from kdlab.engine.cadence import eval_interval
from kdlab.engine.logger import read_metrics
from kdlab.engine.progress import Console
from kdlab.engine.stages import Stage
from kdlab.run import train

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step \d+/\d+ .* img/s eta \d+:\d\d:\d\d$")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_no_bar_off_a_terminal_but_timestamped_lines(caplog):
    stream = io.StringIO()
    console = Console(bar=True, show=True, stream=stream)
    console.start(100, 0)
    with caplog.at_level(logging.INFO, logger="kdlab"):
        console.advance(0.1)
        console.train_line(step=1, epoch=0.1, lr=0.1, loss=2.0, terms={"ce": 2.0}, images_per_s=500.0)
    console.close()
    assert stream.getvalue() == "" and console.bar is None
    assert TIMESTAMPED.match(caplog.messages[-1]) and "(ce=2.0000)" in caplog.messages[-1]


def test_a_terminal_gets_a_bar_with_the_epoch_and_losses_in_its_scrollback():
    stream = Terminal()
    console = Console(bar=True, show=True, stream=stream)
    console.start(10, 0)
    console.advance(0.5)
    console.train_line(step=1, epoch=0.5, lr=0.1, loss=2.0, terms={"kd": 1.5}, images_per_s=500.0)
    assert "epoch 0.50" in console.bar.desc and "kd" in console.bar.postfix
    console.close()
    assert "step 1/10 epoch 0.50 lr 0.1 loss 2.0000 (kd=1.5000)" in stream.getvalue()


def test_a_run_into_a_pipe_writes_no_bar(digits_config, capsys, caplog):
    config = load_config(base=digits_config(train={"epochs": 1, "progress": True, "log_every": 5}))
    with caplog.at_level(logging.INFO, logger="kdlab"):
        train(config)
    assert "\r" not in capsys.readouterr().err
    assert any(TIMESTAMPED.match(m) for m in caplog.messages)
    assert any(" val student: top1 " in m for m in caplog.messages)


def stage(**budget):
    return Stage("train", OptimConfig(), ScheduleConfig(), **budget)


def test_step_budgets_evaluate_about_ten_times_and_at_least_once_per_epoch():
    assert eval_interval(stage(steps=50), None, 23) == 5
    assert eval_interval(stage(steps=5), None, 23) == 1
    assert eval_interval(stage(steps=100_000), None, 23) == 23
    assert eval_interval(stage(epochs=3), None, 23) == 1
    assert eval_interval(stage(steps=50), 7, 23) == 7
    assert eval_interval(stage(steps=50, eval_every=2), 7, 23) == 2


def test_a_step_budget_run_evaluates_about_ten_times(digits_config):
    config = load_config(base=digits_config(train={"epochs": None, "steps": 20}))
    result = train(config)
    evals = [r["step"] for r in read_metrics(result.run_dir) if r["kind"] == "eval"]
    assert evals == list(range(2, 21, 2))
