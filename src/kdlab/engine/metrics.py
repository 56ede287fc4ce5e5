"""Classification metrics accumulated as sums, so they reduce exactly across batches and DDP ranks.

- top-1 accuracy (%), and top-k for each k of ``top_k`` (the true class among the k largest logits; a
  class tied with the true class's logit does not push it out),
- NLL: mean negative log-likelihood of the true class,
- ECE: expected calibration error with equal-width confidence bins (Guo et al., 2017; 15 bins),
  ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``, in %.

Given reference logits (a teacher or teacher ensemble), also

- agreement: % of samples whose top-1 class equals the reference's,
- kl: mean ``KL(p_ref || p_model)`` (the direction distillation minimizes), in nats.

Given a :class:`ClassBreakdown`, also

- per_class_top1: a list with one top-1 per class (None for a class without samples),
- top1_many / top1_medium / top1_few, when it names class groups: the top-1 over the samples of the
  group's classes (on a balanced test set, the mean top-1 of its classes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core import distributed
from kdlab.core.errors import NonFiniteLossError
from kdlab.data.batch import BatchSource
from kdlab.engine.precision import Precision
from kdlab.models.modes import eval_mode


@dataclass(frozen=True)
class ClassBreakdown:
    """Asks for per-class top-1, and for per-group top-1 when ``groups`` (a group id per class) is set."""

    num_classes: int
    groups: Tensor | None = None
    group_names: Sequence[str] = ("many", "medium", "few")


class ClassificationMeter:
    """Accumulates top-1, NLL and ECE statistics from logits; ``compute`` reduces across ranks."""

    def __init__(self, num_bins: int = 15, device: torch.device | str = "cpu",
                 breakdown: ClassBreakdown | None = None, top_k: Sequence[int] = (5,)) -> None:
        self.num_bins = num_bins
        self.top_k = tuple(top_k)
        self.breakdown = breakdown
        self.class_stats = torch.zeros(2, breakdown.num_classes if breakdown else 0, dtype=torch.float64,
                                       device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros_like(self.count)
        self.nll = torch.zeros_like(self.count)
        self.bin_count = torch.zeros(num_bins, dtype=torch.float64, device=device)
        self.bin_conf = torch.zeros_like(self.bin_count)
        self.bin_correct = torch.zeros_like(self.bin_count)
        self.agree = torch.zeros_like(self.count)
        self.kl = torch.zeros_like(self.count)
        self.nonfinite = torch.zeros_like(self.count)
        self.top_k_correct = torch.zeros(len(self.top_k), dtype=torch.float64, device=device)
        self.referenced = False

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor, reference: Tensor | None = None) -> None:
        log_probs = F.log_softmax(logits.float(), dim=1)
        self.nonfinite += (~torch.isfinite(log_probs)).any(dim=1).sum()
        confidence, predicted = log_probs.max(dim=1)
        confidence = confidence.exp().double().nan_to_num(0.0)
        hit = (predicted == targets).double()
        self.count += targets.numel()
        self.correct += hit.sum()
        true_log_prob = log_probs.gather(1, targets[:, None])
        self.nll -= true_log_prob.double().sum()
        if self.top_k:
            rank = (log_probs > true_log_prob).sum(dim=1)
            self.top_k_correct += torch.stack([(rank < k).double().sum() for k in self.top_k])
        bins = (confidence * self.num_bins).long().clamp_(max=self.num_bins - 1)
        self.bin_count.index_add_(0, bins, torch.ones_like(confidence))
        self.bin_conf.index_add_(0, bins, confidence)
        self.bin_correct.index_add_(0, bins, hit)
        if reference is not None:
            self.referenced = True
            log_ref = F.log_softmax(reference.float(), dim=1)
            self.agree += (predicted == log_ref.argmax(dim=1)).double().sum()
            self.kl += (log_ref.exp() * (log_ref - log_probs)).sum(dim=1).double().sum()
        if self.breakdown is not None:
            self.class_stats[0].index_add_(0, targets, torch.ones_like(hit))
            self.class_stats[1].index_add_(0, targets, hit)

    def compute(self) -> dict[str, float]:
        totals = torch.stack([self.count, self.correct, self.nll, self.agree, self.kl, self.nonfinite])
        stats = torch.cat([totals, self.bin_count, self.bin_conf, self.bin_correct, self.top_k_correct])
        stats = distributed.all_reduce_sum(stats)
        count, correct, nll, agree, kl, nonfinite = stats[:6]
        bin_count, bin_conf, bin_correct = stats[6:6 + 3 * self.num_bins].view(3, self.num_bins)
        top_k_correct = stats[6 + 3 * self.num_bins:]
        if count == 0:
            raise ValueError("no samples were evaluated")
        if nonfinite > 0:
            raise NonFiniteLossError(f"the model gave NaN or infinite outputs for {int(nonfinite)} of "
                                     f"{int(count)} evaluation samples: training diverged")
        ece = (bin_conf - bin_correct).abs().sum() / count
        top_k = zip(self.top_k, top_k_correct, strict=True)
        result = {
            "top1": float(100.0 * correct / count),
            **{f"top{k}": float(100.0 * hits / count) for k, hits in top_k},
            "nll": float(nll / count),
            "ece": float(100.0 * ece),
            "n": int(count),
        }
        if self.referenced:
            result.update(agreement=float(100.0 * agree / count), kl=float(kl / count))
        if self.breakdown is not None:
            result.update(class_results(self.breakdown, *distributed.all_reduce_sum(self.class_stats)))
        return result


def class_results(breakdown: ClassBreakdown, count: Tensor, correct: Tensor) -> dict[str, Any]:
    """Per-class top-1 and per-group top-1 from per-class sample and hit counts."""
    results: dict[str, Any] = {
        "per_class_top1": [round(100.0 * float(h / n), 4) if n > 0 else None
                           for h, n in zip(correct, count, strict=True)]
    }
    if breakdown.groups is not None:
        groups = breakdown.groups.to(count.device)
        for index, name in enumerate(breakdown.group_names):
            total = count[groups == index].sum()
            if total > 0:
                results[f"top1_{name}"] = float(100.0 * correct[groups == index].sum() / total)
    return results


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` improves on ``old`` for a metric (accuracy up, NLL and ECE down)."""
    if old is None:
        return True
    return new > old if metric == "top1" else new < old


@torch.no_grad()
def evaluate_model(model: nn.Module, data: BatchSource, precision: Precision,
                   memory_format: torch.memory_format = torch.contiguous_format,
                   reference: Callable[[Tensor], Tensor] | None = None,
                   breakdown: ClassBreakdown | None = None, top_k: Sequence[int] = (5,)) -> dict[str, float]:
    """Top-1 (and top-k for each of ``top_k``), NLL and ECE of ``model`` over one pass of ``data``,
    reduced across DDP ranks; with a ``reference`` (inputs -> logits), also agreement with it and the KL
    from it; with a ``breakdown``, per-class (and per-group) top-1."""
    with eval_mode(model):
        return evaluate_logits(model, data, precision, next(model.parameters()).device, memory_format,
                               reference, breakdown, top_k)


@torch.no_grad()
def evaluate_logits(predict: Callable[[Tensor], Tensor], data: BatchSource, precision: Precision,
                    device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                    reference: Callable[[Tensor], Tensor] | None = None,
                    breakdown: ClassBreakdown | None = None, top_k: Sequence[int] = (5,)) -> dict[str, float]:
    """:func:`evaluate_model` for any ``predict`` (inputs -> logits), e.g. a teacher ensemble's
    prediction ``log mean_i softmax(z_i)``; the caller sets the modes of the models behind it."""
    meter = ClassificationMeter(device=device, breakdown=breakdown, top_k=top_k)
    data.set_epoch(0)
    for batch in data:
        inputs = batch.inputs
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=memory_format)
        with precision.autocast():
            logits = predict(inputs)
            ref = reference(inputs) if reference is not None else None
        meter.update(logits, batch.targets, ref)
    return meter.compute()
