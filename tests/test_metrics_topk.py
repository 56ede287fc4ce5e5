"""Top-k accuracy beside top-1 in every evaluation."""

import pytest
import torch

from kdlab.config import validate
from kdlab.engine.logger import read_metrics
from kdlab.engine.metrics import ClassificationMeter
from kdlab.run import train


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
