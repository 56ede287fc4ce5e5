"""BatchEnsemble convolution and linear layers in the variant of Nam et al. (ICML 2022).

BatchEnsemble (Wen, Tran & Ba, ICLR 2020) gives M members one shared weight ``W`` and per-member
rank-one factors. In the variant used by Nam, Lee, Heo & Lee ("Improving Ensemble Distillation With
Weight Averaging and Diversifying Perturbation", ICML 2022; giung2-jax ``Conv2d_BatchEnsemble`` /
``Linear_BatchEnsemble``) member ``i`` computes

    y = s_i * ( W (r_i * x) + b )

with an input-side factor ``r_i`` (one value per input channel) and an output-side factor ``s_i``
(one per output channel); the shared bias sits *inside* the ``s_i`` scaling. The batch holds the M
members' inputs one after the other (member-major: rows ``i*B .. (i+1)*B - 1`` belong to member i),
so the batch size must be a multiple of M.

Parametrization. A factor is stored as its offset from one, ``r = 1 + r_offset`` (likewise ``s``),
initialised to zero, so all members start identical. This makes two details of the reference
training exact without any change to the optimizer:

- *Weight decay toward one.* The reference replaces the factors' decay ``1/2 ||r||^2`` by
  ``1/2 ||1 - r||^2 / M``; the ordinary (zero-centred) weight decay of the optimizer on the offset is
  ``1/2 ||r - 1||^2``, which is that term after the gradient rescale below (M * lambda/M = lambda).
- *Gradient rescale.* The reference multiplies the factors' gradients by M. Here the forward pass
  uses ``offset.detach() + (offset - offset.detach()) * grad_scale``: the same value, with the loss
  gradient multiplied by ``grad_scale`` (M by default). The optimizer's weight decay is added after,
  unscaled, so the update is ``M * dL/dr + lambda * (r - 1)``, as in the reference.

The layers subclass :class:`torch.nn.Conv2d` / :class:`torch.nn.Linear`, so code that looks for
convolutions (initialisers, presets, hooks) still finds them; ``weight`` and ``bias`` keep their
names, so a plain model's state_dict loads into its converted form with only the offsets missing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def scaled_gradient(value: Tensor, scale: float) -> Tensor:
    """``value`` unchanged in the forward pass; its gradient multiplied by ``scale`` in the backward."""
    if scale == 1.0:
        return value
    frozen = value.detach()
    return frozen + (value - frozen) * scale


def member_rows(factor: Tensor, batch: int, dims_after: int, channel_last: bool) -> Tensor:
    """Per-row scales of a member-major batch: ``factor`` (M, C) repeated B = batch / M times.

    The result broadcasts against an input of shape (batch, C, *spatial) (``channel_last=False``,
    ``dims_after`` spatial dims) or (batch, *middle, C) (``channel_last=True``, ``dims_after`` middle
    dims).
    """
    members = factor.shape[0]
    if batch % members:
        raise ValueError(
            f"a BatchEnsemble layer with {members} members got a batch of {batch} rows, not a multiple of "
            f"{members}: tile the input (kdlab.ensemble.tile) so that member i reads the i-th copy"
        )
    rows = factor.repeat_interleave(batch // members, dim=0)
    if channel_last:
        return rows.view(batch, *([1] * dims_after), factor.shape[1])
    return rows.view(batch, factor.shape[1], *([1] * dims_after))


def conv_arguments(conv: nn.Conv2d) -> dict[str, Any]:
    """The constructor arguments of ``conv`` (without device and dtype)."""
    return {
        "in_channels": conv.in_channels, "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding,
        "dilation": conv.dilation, "groups": conv.groups, "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
    }


class BatchEnsembleMixin:
    """The factor parameters and their effective values, shared by the conv and linear layers."""

    members: int
    grad_scale: float
    r_offset: nn.Parameter
    s_offset: nn.Parameter

    def _init_factors(self, members: int, in_features: int, out_features: int,
                      grad_scale: float | None, like: Tensor) -> None:
        if members < 1:
            raise ValueError(f"a BatchEnsemble needs at least one member, got {members}")
        self.members = members
        self.grad_scale = float(members if grad_scale is None else grad_scale)
        self.r_offset = nn.Parameter(torch.zeros(members, in_features, device=like.device, dtype=like.dtype))
        self.s_offset = nn.Parameter(torch.zeros(members, out_features, device=like.device, dtype=like.dtype))

    def factors(self) -> tuple[Tensor, Tensor]:
        """The effective factors ``r`` (M, C_in) and ``s`` (M, C_out), with the gradient rescale."""
        r = 1.0 + scaled_gradient(self.r_offset, self.grad_scale)
        s = 1.0 + scaled_gradient(self.s_offset, self.grad_scale)
        return r, s

    def mean_factors(self) -> tuple[Tensor, Tensor]:
        """The member-averaged factors ``r_bar`` (C_in,) and ``s_bar`` (C_out,) used by the merge."""
        return 1.0 + self.r_offset.mean(dim=0), 1.0 + self.s_offset.mean(dim=0)


class BatchEnsembleConv2d(BatchEnsembleMixin, nn.Conv2d):
    """``y_i = s_i * (conv(r_i * x_i, W) + b)`` for each member i of a member-major batch."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, members: int, grad_scale: float | None = None) -> BatchEnsembleConv2d:
        """A BatchEnsemble layer sharing ``conv``'s weight and bias (the same Parameter objects)."""
        layer = cls(**conv_arguments(conv), device="meta")
        layer.weight = conv.weight
        layer.bias = conv.bias
        layer._init_factors(members, conv.in_channels, conv.out_channels, grad_scale, conv.weight)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        r, s = self.factors()
        n, spatial = x.shape[0], x.dim() - 2
        y = self._conv_forward(x * member_rows(r.to(x.dtype), n, spatial, False), self.weight, None)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(1, -1, *([1] * spatial))
        return y * member_rows(s.to(y.dtype), n, spatial, False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, members={self.members}, grad_scale={self.grad_scale:g}"


class BatchEnsembleLinear(BatchEnsembleMixin, nn.Linear):
    """``y_i = s_i * (W (r_i * x_i) + b)`` for each member i of a member-major batch."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, members: int,
                    grad_scale: float | None = None) -> BatchEnsembleLinear:
        """A BatchEnsemble layer sharing ``linear``'s weight and bias (the same Parameter objects)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer._init_factors(members, linear.in_features, linear.out_features, grad_scale, linear.weight)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        r, s = self.factors()
        n, middle = x.shape[0], x.dim() - 2
        y = F.linear(x * member_rows(r.to(x.dtype), n, middle, True), self.weight, self.bias)
        return y * member_rows(s.to(y.dtype), n, middle, True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, members={self.members}, grad_scale={self.grad_scale:g}"
