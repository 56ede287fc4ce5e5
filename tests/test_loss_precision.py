"""Gram-type feature losses run their matmuls in float32 even inside a bf16 autocast region."""

import torch

from kdlab.methods.fsp import fsp_matrix
from kdlab.methods.nst import nst_layer_loss


def test_gram_losses_ignore_autocast():
    torch.manual_seed(0)
    a, b = torch.randn(2, 8, 4, 4), torch.randn(2, 6, 8, 8)
    exact = fsp_matrix(a, b), nst_layer_loss(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = fsp_matrix(a, b), nst_layer_loss(a, b)
    for reference, value in zip(exact, under_autocast, strict=True):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference, rtol=0, atol=0)
