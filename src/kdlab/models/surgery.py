"""Edits of built models: swap the classifier head or the input conv, load weights from a file."""

from __future__ import annotations

import os

import torch
from torch import nn

from kdlab.core.checkpoint import mismatch_reason
from kdlab.models.errors import ModelError
from kdlab.models.hooks import find_module


class WeightFileError(ModelError):
    """A ``pretrained`` weight file that is missing, unreadable or made for another model."""


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` by ``module``."""
    parent_path, _, name = path.rpartition(".")
    parent = find_module(model, parent_path) if parent_path else model
    setattr(parent, name, module)


def resize_head(model: nn.Module, path: str, num_classes: int) -> None:
    """Replace the ``nn.Linear`` at ``path`` by a freshly initialized one with ``num_classes`` outputs.

    Nothing changes when the head already has ``num_classes`` outputs.
    """
    head = find_module(model, path)
    if not isinstance(head, nn.Linear):
        raise ModelError(f"the classifier {path!r} is a {type(head).__name__}, not an nn.Linear")
    if head.out_features == num_classes:
        return
    new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    set_module(model, path, new.to(device=head.weight.device, dtype=head.weight.dtype))


def adapt_input_conv(model: nn.Module, in_channels: int, *, keep_weights: bool) -> None:
    """Give the first ``nn.Conv2d`` of ``model`` ``in_channels`` input channels.

    With ``keep_weights`` (pretrained RGB weights) every new input channel gets the sum of the RGB
    kernels divided by ``in_channels``, so a constant image gives the same response as before (the
    rule of timm's ``adapt_input_conv`` for one channel). Otherwise the existing random kernels are
    repeated cyclically over the new channels, which keeps the family's initialization.
    """
    path, conv = next(((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None:
        raise ModelError(f"{type(model).__name__} has no nn.Conv2d whose input channels could be changed")
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ModelError(f"the first conv {path!r} of {type(model).__name__} is grouped; cannot adapt it")
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        if keep_weights:
            summed = conv.weight.sum(dim=1, keepdim=True) / in_channels
            new.weight.copy_(summed.expand(-1, in_channels, -1, -1))
        else:
            index = torch.arange(in_channels, device=conv.weight.device) % conv.in_channels
            new.weight.copy_(conv.weight[:, index])
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    set_module(model, path, new)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a file written by ``torch.save``, loaded with ``weights_only=True``.

    A checkpoint dict holding the weights under ``"model"`` or ``"state_dict"`` (RepDistiller's
    format, Lightning's) is unwrapped, and a ``"module."`` prefix (DataParallel/DDP) is removed.
    """
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise WeightFileError(f"{where!r} not found (expected a state dict file saved with torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is one user-facing error
        raise WeightFileError(f"{where!r} is not a readable state dict file ({type(exc).__name__})") from None
    if isinstance(state, dict) and "config" in state and "format" in state:
        raise WeightFileError(f"{where!r} is a kdlab checkpoint: give it (or its run directory) as the "
                              "model's 'checkpoint', not 'pretrained'")
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightFileError(f"{where!r} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str], classifier: str, num_classes: int) -> None:
    """Load a state dict file into ``model``, then resize the head at ``classifier`` to ``num_classes``.

    The head is first shaped like the file's head, so weights of a model trained on another label
    set load strictly; the new head is then freshly initialized.
    """
    state = read_state_dict(path)
    weight = state.get(f"{classifier}.weight")
    if weight is not None and weight.dim() == 2:
        resize_head(model, classifier, weight.shape[0])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise WeightFileError(f"the weights in {os.fspath(path)!r} do not fit {type(model).__name__}: "
                              f"{mismatch_reason(err)}") from None
    resize_head(model, classifier, num_classes)
