"""The divergence every logit-matching method shares, on log-probabilities."""

from __future__ import annotations

from torch import Tensor


def kl_divergence(log_p: Tensor, log_q: Tensor, dim: int = -1) -> Tensor:
    """``KL(p || q) = sum_c p_c (log p_c - log q_c)`` along ``dim`` of two log-probability tensors, one
    value per row (average it for a batch loss)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=dim)
