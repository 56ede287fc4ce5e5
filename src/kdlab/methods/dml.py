"""DML: deep mutual learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018, "Deep Mutual Learning").

A cohort of N >= 2 peers trains from scratch together, with no pretrained teacher. Peer k's loss is

    L_k = CE(z_k, y) + 1/(N-1) * sum_{l != k} (1/B) * sum_i KL( p_l,i || p_k,i ),   p = softmax(z)

with the other peers' predictions p_l treated as constants (detached). The distiller returns the sums
over peers, ``ce = sum_k CE_k`` and ``dml = sum_k mutual_k``: since every cross-peer target is detached,
the gradient of the sum with respect to peer k's parameters is exactly the gradient of L_k, so one
backward and one optimizer step update every peer by its own loss.

Update order: this is the synchronous variant (all peers step on the same batch from the same
predictions), as in AberHu's Knowledge-Distillation-Zoo. The paper and the official TensorFlow code
update the peers one after another (peer 2 sees peer 1's prediction after peer 1's step). The
synchronous form is one forward per peer, one loss and one optimizer step per batch, which is what the
engine runs and what DDP wraps; the sequential form needs N optimizer steps per batch. For N = 2 the
1/(N-1) normalisation equals the official code's plain sum over the other peers.

The first peer is the student (its logits are returned); the others are ``peers.0``, ``peers.1``, ...
(``nn.ModuleList``), so they are trained, checkpointed and DDP-wrapped with the student, and evaluated
as ``peer1``, ``peer2``, ... through :meth:`eval_models`. All peers share the run's optimizer settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from kdlab.core.errors import ConfigError
from kdlab.core.registry import UnknownNameError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillContext, Distiller, DistillOutput, StepContext
from kdlab.methods.divergence import kl_divergence
from kdlab.methods.registry import register_method
from kdlab.models import build_model
from kdlab.models.errors import ModelError


def mutual_losses(logits: Sequence[Tensor]) -> list[Tensor]:
    """Per peer k: ``1/(N-1) * sum_{l != k} mean_i KL(p_l || p_k)`` with p_l detached (float32)."""
    if len(logits) < 2:
        raise ValueError("mutual learning needs at least two peers")
    log_probs = [F.log_softmax(z.float(), dim=1) for z in logits]
    targets = [lp.detach() for lp in log_probs]
    losses = []
    for k, log_q in enumerate(log_probs):
        kls = [kl_divergence(lp, log_q, dim=1).mean() for j, lp in enumerate(targets) if j != k]
        losses.append(sum(kls) / len(kls))
    return losses


class DMLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    peers: int = Field(2, ge=2)
    peer_models: list[str] | None = None


@register_method("dml")
class DeepMutualLearning(Distiller):
    """Online distillation between the student and ``peers - 1`` other networks; no teacher."""

    terms = ("ce", "dml")
    default_weights = {"ce": 1.0, "dml": 1.0}
    needs_teacher = False
    Params = DMLParams
    soft_targets = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: DMLParams,
                 context: DistillContext, **norms: object) -> None:
        super().__init__(student, teacher, params, context, **norms)
        names = params.peer_models
        if names is None:
            if not context.student_name:
                raise ConfigError("method.params.peer_models: the student's architecture is unknown; "
                                  "name the other peers' models")
            names = [context.student_name] * (params.peers - 1)
        elif len(names) + 1 != params.peers and "peers" in params.model_fields_set:
            raise ConfigError(f"method.params.peer_models: {len(names)} names for peers={params.peers}; "
                              f"expected peers - 1 = {params.peers - 1} (the student is the first peer)")
        elif not names:
            raise ConfigError("method.params.peer_models: expected at least one peer model name")
        try:
            self.peers = nn.ModuleList(
                build_model(name, context.num_classes, in_channels=context.input_shape[0]) for name in names
            )
        except (UnknownNameError, ModelError) as exc:
            raise ConfigError(f"method.params.peer_models: {exc}") from None

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        logits = [self.student(batch.inputs), *(peer(batch.inputs) for peer in self.peers)]
        ce = sum(self.label_loss(z, batch.label_targets) for z in logits)
        return DistillOutput({"ce": ce, "dml": sum(mutual_losses(logits))}, logits[0])

    def eval_models(self) -> dict[str, nn.Module]:
        return {f"peer{i}": peer for i, peer in enumerate(self.peers, start=1)}
