"""BatchNorm with global batch statistics under DDP (``train.sync_batchnorm``).

Under DDP each process normalizes with the mean and variance of its own share of the batch, so N
processes of batch B/N do not train like one process of batch B: the normalization differs, and so do
the running statistics. Synchronized BatchNorm (Zhang et al., 2018, "Context Encoding for Semantic
Segmentation"; ``torch.nn.SyncBatchNorm``) computes them over the global batch instead:

    mean = sum_r sum_i x_ri / n,   var = sum_r sum_i (x_ri - mean)^2 / n,   n = sum_r n_r

(per channel, over every process r), normalizes with the biased ``var`` and updates the running
variance with the unbiased ``var * n / (n - 1)``, as one process would. The sums are all-reduced with
autograd (``torch.distributed.nn.functional.all_reduce``), so the gradient through the statistics
reaches every process's inputs. On CUDA kdlab uses ``torch.nn.SyncBatchNorm``; its kernels are CUDA
only, so on CPU (gloo) :class:`GlobalBatchNorm` computes the same with two small all-reduces per layer.

Layers are converted in place by switching their class (as :mod:`kdlab.models.batchnorm` does), so
hooks, parameters, module paths and ``state_dict`` keys stay as they were. Frozen BatchNorm
(``student.freeze_bn``) always normalizes with its running statistics and is left alone.
"""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdlab.core import distributed
from kdlab.models.batchnorm import is_frozen_batchnorm


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over the batch of every process (any backend, any device); plain BatchNorm outside
    training or without a process group."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and distributed.is_enabled() and distributed.world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        total = dist_fn.all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = dist_fn.all_reduce(centred.square().sum(dims)) / n
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1))
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


def sync_batchnorm(model: nn.Module, device: torch.device) -> int:
    """Switch every live BatchNorm layer of ``model`` to global batch statistics, in place; returns how
    many were switched (``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` elsewhere)."""
    target = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    count = 0
    for module in model.modules():
        if (isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, GlobalBatchNorm))
                and not is_frozen_batchnorm(module)):
            module.__class__ = target
            if target is nn.SyncBatchNorm:
                module.process_group = None
            count += 1
    return count
