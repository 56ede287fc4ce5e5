"""BatchNorm statistics of an averaged model: re-estimated over training batches when BN is live.

Averaging weights does not average what BatchNorm's running statistics should be: the mean and
variance of the averaged network's activations differ from any iterate's (Izmailov et al., 2018,
"Averaging Weights Leads to Wider Optima", and ``torch.optim.swa_utils.update_bn``). With frozen BN
(``student.freeze_bn``, the DomainBed convention) the statistics never change and nothing is needed.
With live BN, :func:`recalibrate_bn` resets every BN layer and recomputes its statistics as a
cumulative average (``momentum=None``) over up to ``num_batches`` training batches: the cost is that
many forward passes of the averaged model (about a third of a training step each), paid each time
the averaged model is evaluated after it changed. SWAD's reference code uses 500 batches, once.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from kdlab.data.batch import Batch
from kdlab.engine.precision import Precision


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def independent_batches(source: Iterable[Batch]) -> Iterator[Batch]:
    """Batches of ``source`` from an iterator that does not disturb one already running.

    A ``DataLoader`` with persistent workers hands out a single shared iterator, so a second pass
    during the training loop's pass would reset it; such a source is read through a worker-free
    copy of its loader instead (same sampler, decoding in this process).
    """
    loader = getattr(source, "loader", None)
    if isinstance(loader, DataLoader) and loader.persistent_workers:
        source = copy.copy(source)
        if loader.batch_size is None:
            source.loader = DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, num_workers=0,
                                       collate_fn=loader.collate_fn)
        else:
            source.loader = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                                       drop_last=loader.drop_last, num_workers=0,
                                       collate_fn=loader.collate_fn)
    return iter(source)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Batch], num_batches: int,
                   precision: Precision | None = None,
                   memory_format: torch.memory_format = torch.contiguous_format) -> int:
    """Recompute the running statistics of every BN layer of ``model``; returns the batches used.

    Only the BN layers run in training mode; the rest of the model (dropout) stays in eval mode.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    was_training = model.training
    model.eval()
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.training = True
    used = 0
    try:
        for batch in batches:
            if used == num_batches:
                break
            inputs = batch.inputs
            if inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=memory_format)
            if precision is not None:
                with precision.autocast():
                    model(inputs)
            else:
                model(inputs)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return used
