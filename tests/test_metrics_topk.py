"""Top-k accuracy beside top-1 in every evaluation, and the run's summary.csv."""

import csv

import pytest
import torch

from kdlab.config import validate
from kdlab.engine.logger import read_metrics
from kdlab.engine.metrics import ClassificationMeter
from kdlab.run import train

from .test_train import Interrupt


def test_top_k_counts_the_true_class_among_the_k_largest_logits():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0],   # true 0: rank 0
                           [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],   # true 2: rank 2
                           [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],   # true 5: rank 5
                           [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])  # true 1: tied with the top logit
    meter = ClassificationMeter(top_k=(2, 3, 5))
    meter.update(logits, torch.tensor([0, 2, 5, 1]))
    result = meter.compute()
    assert result["top2"] == 50.0 and result["top3"] == 75.0 and result["top5"] == 75.0
    assert result["top1"] == 25.0


def test_every_evaluation_reports_top5_by_default_and_the_configured_k(digits_config):
    run = train(validate(digits_config(name="topk", train={"epochs": 1})))
    evals = [r for r in read_metrics(run.run_dir) if r["kind"] == "eval"]
    assert evals and all(r["top5"] >= r["top1"] for r in evals)
    assert run.summary["test_last"]["top5"] >= run.summary["test_last"]["top1"]
    other = train(validate(digits_config(name="top3", train={"epochs": 1, "top_k": [2, 3]})), write=False)
    assert {"top2", "top3"} <= set(other.summary["test_last"]) and "top5" not in other.summary["test_last"]
    with pytest.raises(ValueError, match="top_k"):
        validate(digits_config(train={"top_k": [1]}))


def test_summary_csv_has_one_row_per_evaluation_and_follows_a_resume(digits_config, tmp_path):
    ema = {"strategy": "ema", "params": {"decay": 0.9}}
    config = validate(digits_config(name="csv", averaging=ema, train={"epochs": 3}))
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(20)])
    run_dir = tmp_path / "runs" / "csv"
    train(config, resume=run_dir)
    with (run_dir / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    steps = sorted({r["step"] for r in read_metrics(run_dir) if r["kind"] == "eval"})
    assert [int(row["step"]) for row in rows] == steps and len(steps) == 3
    columns = {"lr", "train_loss", "student_top1", "student_top5", "averaged_top1", "averaged_nll"}
    assert columns <= set(rows[0])
    assert all(float(row["student_top5"]) >= float(row["student_top1"]) for row in rows)
