"""BatchNorm folded into the convolution before it, in place, for a frozen model in eval mode.

An eval-mode BatchNorm is an affine map per channel, so ``bn(conv(x))`` is one convolution with

    s = gamma / sqrt(running_var + eps),  w' = w * s (per output channel),  b' = (b - running_mean) * s + beta

(``b = 0`` for a conv without bias; ``gamma = 1, beta = 0`` for a BN without affine parameters).

Pairs are found in the model's ``torch.fx`` graph (or ``torch.export``'s, for a model whose forward
branches on shapes): a plain ``nn.Conv2d`` whose only user is a plain
``nn.BatchNorm2d`` (neither module's ``forward`` overridden, each called once, the BN tracking running
statistics). The folded weights are written into the conv; the BN stays at its module path, with its
hooks, and now passes its input on unchanged, so its output is still the original BN output. What the
folded model no longer computes is the pre-BN conv output: a pair whose conv has a forward hook (a tap
of the conv's output) or whose BN has a forward pre-hook (a tap of the BN's input) is left unfolded,
and registering such a hook on a folded pair afterwards is refused. A model that neither can trace
(control flow on tensor values, say) is left unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import Tensor, fx, nn

from kdlab.models.errors import ModelError
from kdlab.models.hooks import has_input_hooks, has_output_hooks, hooks_suspended


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did: the (conv, bn) paths folded, those kept for hooks, or why the model
    could not be traced (then nothing was folded)."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    untraceable: str | None = None


def _plain(module: nn.Module, base: type[nn.Module]) -> bool:
    """An instance of ``base`` whose forward is ``base``'s own (timm's BatchNormAct2d, whose forward adds
    an activation, is not a plain BatchNorm2d)."""
    return isinstance(module, base) and type(module).forward is base.forward and \
        getattr(type(module), "_conv_forward", None) is getattr(base, "_conv_forward", None)


class _PairTracer(fx.Tracer):
    """The default tracer, with every plain conv and BatchNorm (also kdlab's frozen-BN subclass) a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        plain = _plain(m, nn.Conv2d) or _plain(m, nn.BatchNorm2d)
        return plain or super().is_leaf_module(m, module_qualified_name)


class _FoldedConv:
    """Mixin of a conv whose weights hold its BatchNorm: its output is the BN's."""

    def register_forward_hook(self, *args: Any, **kwargs: Any) -> Any:
        raise ModelError(f"this {type(self).__name__} has its BatchNorm folded in: its output is the BN's, "
                         "not the conv's; tap the model before folding (or switch folding off)")


class _FoldedNorm:
    """Mixin of a BatchNorm folded into the conv before it: passes its input on unchanged."""

    def forward(self, inputs: Tensor) -> Tensor:
        return inputs

    def register_forward_pre_hook(self, *args: Any, **kwargs: Any) -> Any:
        raise ModelError(f"this {type(self).__name__} is folded into the conv before it: its input is no "
                         "longer computed; tap the model before folding (or switch folding off)")


@cache
def _folded_class(cls: type[nn.Module], mixin: type) -> type[nn.Module]:
    return type(f"Folded{cls.__name__}", (mixin, cls), {"__module__": __name__})


def is_folded(module: nn.Module) -> bool:
    return isinstance(module, (_FoldedConv, _FoldedNorm))


def _pairs_in(graph: fx.Graph, path_of: Callable[[fx.Node], str | None],
              modules: dict[str, nn.Module]) -> list[tuple[str, str]]:
    """The foldable (conv path, bn path) pairs of ``graph``, whose nodes ``path_of`` maps to the path of
    the module computing them (None: no module's)."""
    owned = [n for n in graph.nodes if path_of(n) in modules]
    calls = Counter(id(modules[path_of(n)]) for n in owned)
    pairs = []
    for node in owned:
        bn, source = modules[path_of(node)], node.args[0] if node.args else None
        if not (_plain(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_var is not None):
            continue
        if not (isinstance(source, fx.Node) and path_of(source) in modules and len(source.users) == 1):
            continue
        conv = modules[path_of(source)]
        if _plain(conv, nn.Conv2d) and calls[id(conv)] == 1 and calls[id(bn)] == 1 and not is_folded(conv):
            pairs.append((path_of(source), path_of(node)))
    return pairs


def _called_module(node: fx.Node) -> str | None:
    return node.target if node.op == "call_module" else None


def _innermost_module(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    return next(reversed(stack.values()))[0] if node.op == "call_function" and stack else None


def find_pairs(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[tuple[str, str]]:
    """(conv path, bn path) of every foldable pair of ``model``, in graph order. The graph is
    ``torch.fx``'s symbolic trace (convs and BatchNorms as leaves); where that fails (control flow on
    shapes, say) and ``input_shape`` (C, H, W) is given, ``torch.export``'s graph for a batch of that
    shape, whose operations name the module that ran them. Raises what the last attempt raises. Hooks
    do not run while tracing."""
    modules = dict(model.named_modules())
    with hooks_suspended(model):
        try:
            return _pairs_in(_PairTracer().trace(model), _called_module, modules)
        except Exception:  # any failure of the symbolic trace leaves the export to try
            if input_shape is None:
                raise
        device = next(iter(model.parameters())).device
        example = torch.zeros(2, *input_shape, device=device)
        exported = torch.export.export(model, (example,), strict=False)
    return _pairs_in(exported.graph_module.graph, _innermost_module, modules)


@torch.no_grad()
def fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Write ``bn``'s affine map into ``conv`` (computed in float64) and make ``bn`` pass its input on."""
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))
    conv.__class__ = _folded_class(type(conv), _FoldedConv)
    bn.__class__ = _folded_class(type(bn), _FoldedNorm)


def fold_batchnorm(model: nn.Module, input_shape: Sequence[int] | None = None) -> FoldReport:
    """Fold every foldable conv->BN pair of ``model`` (in eval mode) in place, but those whose pre-BN
    output is hooked; ``input_shape`` lets models that ``torch.fx`` cannot trace be exported instead."""
    if model.training:
        raise ModelError(f"{type(model).__name__}: BatchNorm is folded only in eval mode (its running "
                         "statistics are then an affine map)")
    report = FoldReport()
    try:
        pairs = find_pairs(model, input_shape)
    except Exception as exc:  # any tracing failure leaves the model as it is
        report.untraceable = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        return report
    modules = dict(model.named_modules())
    for conv_path, bn_path in pairs:
        conv, bn = modules[conv_path], modules[bn_path]
        if has_output_hooks(conv) or has_input_hooks(bn):
            report.kept.append((conv_path, bn_path))
            continue
        fold_pair(conv, bn)
        report.folded.append((conv_path, bn_path))
    return report
