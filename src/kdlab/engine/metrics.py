"""Classification metrics accumulated as sums, so they reduce exactly across batches and DDP ranks.

- top-1 accuracy (%),
- NLL: mean negative log-likelihood of the true class,
- ECE: expected calibration error with equal-width confidence bins (Guo et al., 2017; 15 bins),
  ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``, in %.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.data.batch import BatchSource
from kdlab.engine import distributed
from kdlab.engine.precision import Precision


class ClassificationMeter:
    """Accumulates top-1, NLL and ECE statistics from logits; ``compute`` reduces across ranks."""

    def __init__(self, num_bins: int = 15, device: torch.device | str = "cpu") -> None:
        self.num_bins = num_bins
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros_like(self.count)
        self.nll = torch.zeros_like(self.count)
        self.bin_count = torch.zeros(num_bins, dtype=torch.float64, device=device)
        self.bin_conf = torch.zeros_like(self.bin_count)
        self.bin_correct = torch.zeros_like(self.bin_count)

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor) -> None:
        log_probs = F.log_softmax(logits.float(), dim=1)
        confidence, predicted = log_probs.max(dim=1)
        confidence = confidence.exp().double()
        hit = (predicted == targets).double()
        self.count += targets.numel()
        self.correct += hit.sum()
        self.nll -= log_probs.gather(1, targets[:, None]).double().sum()
        bins = (confidence * self.num_bins).long().clamp_(max=self.num_bins - 1)
        self.bin_count.index_add_(0, bins, torch.ones_like(confidence))
        self.bin_conf.index_add_(0, bins, confidence)
        self.bin_correct.index_add_(0, bins, hit)

    def compute(self) -> dict[str, float]:
        stats = torch.cat([self.count[None], self.correct[None], self.nll[None],
                           self.bin_count, self.bin_conf, self.bin_correct])
        stats = distributed.all_reduce_sum(stats)
        count, correct, nll = stats[0], stats[1], stats[2]
        bin_count, bin_conf, bin_correct = stats[3:].view(3, self.num_bins)
        if count == 0:
            raise ValueError("no samples were evaluated")
        ece = (bin_conf - bin_correct).abs().sum() / count
        return {
            "top1": float(100.0 * correct / count),
            "nll": float(nll / count),
            "ece": float(100.0 * ece),
            "n": int(count),
        }


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` improves on ``old`` for a metric (accuracy up, NLL and ECE down)."""
    if old is None:
        return True
    return new > old if metric == "top1" else new < old


@torch.no_grad()
def evaluate_model(model: nn.Module, data: BatchSource, precision: Precision,
                   memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, float]:
    """Top-1, NLL and ECE of ``model`` over one pass of ``data``, reduced across DDP ranks."""
    was_training = model.training
    model.eval()
    meter = ClassificationMeter(device=next(model.parameters()).device)
    data.set_epoch(0)
    for batch in data:
        inputs = batch.inputs
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=memory_format)
        with precision.autocast():
            logits = model(inputs)
        meter.update(logits, batch.targets)
    model.train(was_training)
    return meter.compute()
