"""An ensemble of frozen teachers, run as one batched call when their architectures match.

:class:`TeacherEnsemble` holds M trained models. ``member_logits(x)`` returns their logits stacked to
(M, B, K); calling the ensemble returns the deep-ensemble prediction ``log mean_i softmax(z_i)``, so
an ensemble can stand wherever one teacher is expected (its softmax is the mean probability).

Batched call. When every member has the same architecture (module types, parameter and buffer
names, shapes and dtypes), the members' parameters and buffers are stacked
(``torch.func.stack_module_state``) and one ``torch.func.functional_call`` of a weightless skeleton is
vectorized over them with ``torch.func.vmap``: one call instead of a Python loop of M. The stacked
copy is rebuilt lazily after the ensemble is moved or cast; call :meth:`TeacherEnsemble.refresh` after
changing a member's weights in place, and :meth:`TeacherEnsemble.restack` after changing the members'
modules in place (BatchNorm folded into their convolutions, say). ``batched=None`` (default) uses the
batched call for matching members on accelerators and the loop on CPU, where
``benchmarks/ensemble_teachers.py`` measured the loop faster (vmap turns each convolution into a grouped
convolution and splits batch norm into separate passes; see BENCHMARKS.md). ``batched=True``/``False``
forces one path.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from kdlab.ensemble.batchensemble import ensemble_log_probs
from kdlab.models.hooks import drop_hooks


def architecture_signature(model: nn.Module) -> tuple:
    """What must match for members to be stacked: module types, tensor names, shapes and dtypes."""
    modules = tuple((name, type(m)) for name, m in model.named_modules())
    tensors = tuple((name, tuple(t.shape), t.dtype)
                    for name, t in [*model.named_parameters(), *model.named_buffers()])
    return modules, tensors


def same_architecture(models: Sequence[nn.Module]) -> bool:
    first = architecture_signature(models[0])
    return all(architecture_signature(m) == first for m in models[1:])


class TeacherEnsemble(nn.Module):
    """M frozen models in eval mode; ``member_logits`` gives (M, B, K), ``forward`` the ensemble."""

    def __init__(self, models: Sequence[nn.Module], *, batched: bool | None = None) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("a TeacherEnsemble needs at least one model")
        self.members = nn.ModuleList(models)
        self.members.requires_grad_(False)
        self.members.eval()
        self.batched = batched
        self.restack()

    def __len__(self) -> int:
        return len(self.members)

    def train(self, mode: bool = True) -> TeacherEnsemble:
        """Teachers stay in eval mode whatever is asked."""
        return super().train(False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> TeacherEnsemble:
        super()._apply(fn, recurse)
        self.refresh()
        return self

    def restack(self) -> None:
        """Check again whether the members can be stacked, and copy the weightless skeleton of the batched
        call from the first member as it is now (without its feature hooks)."""
        self.stackable = same_architecture(list(self.members))
        if self.batched and not self.stackable:
            raise ValueError("batched=True needs members of one architecture; these differ")
        skeleton = None
        if self.stackable:
            skeleton = copy.deepcopy(self.members[0]).to("meta")
            drop_hooks(skeleton)
        self.__dict__["_skeleton"] = skeleton
        self.__dict__["_stacked"] = None

    def refresh(self) -> None:
        """Drop the stacked copy of the members' weights; it is rebuilt at the next batched call."""
        self.__dict__["_stacked"] = None

    def uses_batched_call(self, device: torch.device) -> bool:
        if self.batched is None:
            return self.stackable and device.type != "cpu"
        return self.batched

    def _stacked_state(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if self.__dict__["_stacked"] is None:
            params, buffers = stack_module_state(list(self.members))
            params = {k: v.detach() for k, v in params.items()}
            self.__dict__["_stacked"] = (params, buffers)
        return self.__dict__["_stacked"]

    def member_logits(self, inputs: Tensor) -> Tensor:
        """(M, B, K) logits of every member for the batch ``inputs`` (gradients flow to ``inputs``)."""
        if not self.uses_batched_call(inputs.device):
            return torch.stack([model(inputs) for model in self.members])
        params, buffers = self._stacked_state()
        skeleton = self.__dict__["_skeleton"]

        def call(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(skeleton, (p, b), (x,))

        return vmap(call, in_dims=(0, 0, None))(params, buffers, inputs)

    def forward(self, inputs: Tensor) -> Tensor:
        """The ensemble prediction as log-probabilities: ``log mean_i softmax(z_i)``."""
        return ensemble_log_probs(self.member_logits(inputs))


def member_logits(model: nn.Module, inputs: Tensor) -> Tensor:
    """(M, B, K) logits of an ensemble's members, or (1, B, K) for a single model."""
    if isinstance(model, TeacherEnsemble):
        return model.member_logits(inputs)
    return model(inputs).unsqueeze(0)
