"""Turn any model into a BatchEnsemble, run its members on a tiled batch, and average it back.

- :func:`to_batchensemble` swaps every ``nn.Conv2d`` and ``nn.Linear`` of a model (in place) for the
  BatchEnsemble layers of :mod:`kdlab.ensemble.layers`, sharing the original weights; normalization
  layers stay ordinary and shared by all members, as in Nam et al. (ICML 2022).
- :class:`BatchEnsemble` wraps a converted model: :meth:`BatchEnsemble.member_logits` tiles a batch
  M times (member i reads the i-th copy) and returns (M, B, K) logits; calling it returns the members'
  ensemble prediction ``log mean_i softmax(z_i)``.
- :func:`merge_batchensemble` averages the factors over members and folds them into the shared
  weights and biases (Nam et al.'s "weight averaging"):

      r_bar = mean_i r_i,  s_bar = mean_i s_i
      W' = diag(s_bar) W diag(r_bar),  b' = s_bar * b

  giving a plain model of the original class with an ordinary state_dict. The bias is scaled too: in
  this BatchEnsemble variant ``s`` multiplies the biased output, so ``s_bar * b`` is exact, whereas the
  reference evaluation notebook leaves ``b`` unscaled. Only the factors are averaged, not the members'
  effective weights (``mean_i r_i s_i^T != r_bar s_bar^T``). Normalization statistics are kept as
  trained (estimated on the members' mixture), without recalibration, as in the reference code.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.ensemble.layers import (
    BatchEnsembleConv2d,
    BatchEnsembleLinear,
    BatchEnsembleMixin,
    conv_arguments,
)

PLAIN_TYPES = (nn.Conv2d, nn.Linear)


def tile(inputs: Tensor, members: int) -> Tensor:
    """The batch repeated ``members`` times, member-major: copy i is rows ``i*B .. (i+1)*B - 1``."""
    return inputs.repeat(members, *([1] * (inputs.dim() - 1)))


def ensemble_log_probs(member_logits: Tensor) -> Tensor:
    """``log mean_i softmax(z_i)`` over the leading member dimension of (M, B, K) logits, in float32."""
    log_probs = F.log_softmax(member_logits.float(), dim=-1)
    return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(member_logits.shape[0])))


def _convert_layer(module: nn.Module, members: int, grad_scale: float | None) -> nn.Module:
    if type(module) is nn.Conv2d:
        return BatchEnsembleConv2d.from_conv(module, members, grad_scale)
    return BatchEnsembleLinear.from_linear(module, members, grad_scale)


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def batchensemble_layers(model: nn.Module) -> dict[str, BatchEnsembleMixin]:
    """The BatchEnsemble layers of ``model`` by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BatchEnsembleMixin)}


def to_batchensemble(model: nn.Module, members: int, *, grad_scale: float | None = None) -> nn.Module:
    """Swap every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` for a BatchEnsemble layer, in place.

    The new layers share the original ``weight`` and ``bias`` Parameters and add factor offsets
    ``r_offset`` (M, C_in) and ``s_offset`` (M, C_out) at zero (factors at one), so the converted model
    at first computes, for every member, what the plain model did. ``grad_scale`` multiplies the
    factors' loss gradients (default: ``members``, as in the reference). Only layers whose type is
    exactly ``nn.Conv2d`` or ``nn.Linear`` are converted (subclasses with their own forward are left
    alone); other layers, normalization included, are shared by all members. Module paths do not
    change. A model that is itself a conv or linear layer is returned converted (a new object).
    """
    if type(model) in PLAIN_TYPES:
        return _convert_layer(model, members, grad_scale)
    targets = [(name, m) for name, m in model.named_modules() if name and type(m) in PLAIN_TYPES]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer to convert")
    for name, module in targets:
        _replace(model, name, _convert_layer(module, members, grad_scale))
    return model


class BatchEnsemble(nn.Module):
    """A model converted to a BatchEnsemble of ``members`` members, run on tiled batches.

    ``member_logits(x)`` returns (M, B, K): member i's logits for the batch ``x``. ``forward(x)``
    returns the members' ensemble prediction as log-probabilities (B, K), so that evaluation code
    that takes ``argmax``/``log_softmax`` of a model's output sees the ensemble; it costs M forward
    passes. The deployable single network is :func:`merge_batchensemble` of this module.
    """

    def __init__(self, model: nn.Module, members: int, *, grad_scale: float | None = None) -> None:
        super().__init__()
        self.size = members
        self.net = to_batchensemble(model, members, grad_scale=grad_scale)

    def member_logits(self, inputs: Tensor) -> Tensor:
        logits = self.net(tile(inputs, self.size))
        return logits.view(self.size, inputs.shape[0], *logits.shape[1:])

    def forward(self, inputs: Tensor) -> Tensor:
        return ensemble_log_probs(self.member_logits(inputs))


def _plain_layer(layer: BatchEnsembleMixin) -> nn.Module:
    like = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, BatchEnsembleConv2d):
        return nn.Conv2d(**conv_arguments(layer), **like)
    return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, **like)


def folded_weight(layer: BatchEnsembleMixin) -> tuple[Tensor, Tensor | None]:
    """``W' = diag(s_bar) W diag(r_bar)`` and ``b' = s_bar * b`` of one BatchEnsemble layer.

    For a grouped convolution, output channel o reads input channels ``g(o)*C_in/groups + j`` where
    ``g(o)`` is its group, so ``r_bar`` is gathered per output channel.
    """
    r_bar, s_bar = layer.mean_factors()
    weight = layer.weight
    if isinstance(layer, BatchEnsembleConv2d):
        groups = layer.groups
        per_group = layer.out_channels // groups
        group_of_out = torch.arange(layer.out_channels, device=weight.device) // per_group
        r_per_out = r_bar.view(groups, layer.in_channels // groups)[group_of_out]
        spatial = [1] * (weight.dim() - 2)
        weight = weight * s_bar.view(-1, 1, *spatial) * r_per_out.view(*r_per_out.shape, *spatial)
    else:
        weight = s_bar[:, None] * weight * r_bar[None, :]
    bias = None if layer.bias is None else s_bar * layer.bias
    return weight, bias


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state_dict of the merged plain model: folded weights, biases, and everything else as is."""
    net = model.net if isinstance(model, BatchEnsemble) else model
    state = dict(net.state_dict())
    for path, layer in batchensemble_layers(net).items():
        prefix = f"{path}." if path else ""
        weight, bias = folded_weight(layer)
        state[f"{prefix}weight"] = weight
        if bias is not None:
            state[f"{prefix}bias"] = bias
        del state[f"{prefix}r_offset"], state[f"{prefix}s_offset"]
    return state


@torch.no_grad()
def merge_batchensemble(model: nn.Module, out: nn.Module | None = None) -> nn.Module:
    """Average a BatchEnsemble's factors over members and fold them into one plain network.

    ``model`` is a :class:`BatchEnsemble` or a model converted by :func:`to_batchensemble`. Returns a
    model of the original class whose BatchEnsemble layers are plain ``nn.Conv2d``/``nn.Linear`` again,
    holding the folded weights (see the module docstring); its state_dict loads into a freshly built
    model of the original architecture. ``out``, a model returned by an earlier call, is updated in
    place instead of building a new one. ``model`` is left unchanged.
    """
    net = model.net if isinstance(model, BatchEnsemble) else model
    state = merged_state_dict(net)
    if out is None:
        if isinstance(net, BatchEnsembleMixin):
            out = _plain_layer(net)
        else:
            out = copy.deepcopy(net)
            for path, layer in batchensemble_layers(net).items():
                _replace(out, path, _plain_layer(layer))
            out.train(net.training)
    out.load_state_dict(state)
    return out
