"""Conversion to global-batch BatchNorm (the 2-process equivalence is in test_ddp.py)."""

import torch
from torch import nn

from kdlab.engine.sync_batchnorm import GlobalBatchNorm, sync_batchnorm
from kdlab.models.batchnorm import freeze_batchnorm


def test_conversion_keeps_hooks_keys_and_frozen_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    freeze_batchnorm(model[2])
    keys = list(model.state_dict())
    seen = []
    model[1].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert sync_batchnorm(model, torch.device("cpu")) == 1
    assert type(model[1]) is GlobalBatchNorm and type(model[2][0]) is not GlobalBatchNorm
    assert list(model.state_dict()) == keys
    model(torch.randn(2, 3, 6, 6))
    assert seen == [torch.Size([2, 4, 4, 4])]


def test_without_a_process_group_it_is_plain_batchnorm():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(4, momentum=None)
    converted = nn.BatchNorm2d(4, momentum=None)
    sync_batchnorm(converted, torch.device("cpu"))
    inputs = torch.randn(8, 4, 5, 5)
    for _ in range(2):
        torch.testing.assert_close(converted(inputs), plain(inputs), rtol=0, atol=0)
    torch.testing.assert_close(converted.running_var, plain.running_var, rtol=0, atol=0)
