"""CRD: contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020, "Contrastive
Representation Distillation").

Both penultimate embeddings go through a trainable head (linear to ``feat_dim`` = 128, then L2
normalization): s = g_S(f_S(x)), t = g_T(f_T(x)). Two symmetric contrasts are summed: the student's s_i
as anchor against teacher keys (positive: the key of sample i; K negatives: keys of other samples), and
the teacher's t_i as anchor against student keys. With tau the temperature (0.07), N the training-set
size and Z a normalization constant:

    P_k     = exp(anchor . key_k / tau) / Z
    h_k     = P_k / (P_k + K/N)                        (the paper's critic h(T, S), noise prior K/N)
    L_nce   = -(1/B) * sum_i [ log h_pos + sum_{k=1..K} log(1 - h_k) ]      (per direction)
    L_crd   = L_nce(student anchors) + L_nce(teacher anchors)
    L       = w_ce * CE(z_s, y) + w_crd * L_crd

This is the paper's NCE objective as implemented in RepDistiller (``ContrastMemory`` + ``ContrastLoss``;
torchdistill's ``CRDLoss`` is a copy), computed in log space (the reference's eps 1e-7 in the two
denominators is dropped; it is negligible next to K/N). The paper prints h with exp(.) unnormalized
(Z = 1); the reference divides by Z, estimated once on the first batch as mean(exp(score / tau)) * N, as
in the instance-discrimination NCE it builds on, and that is the default here (``z: null``; a number
fixes Z). With Z = 1 each of the K negatives adds about log(1 + exp(s/tau) N/K) ~ 1 instead of ~ 1/K. Option
``objective: infonce`` uses the softmax form instead, ``-log(exp(pos/tau) / sum_k exp(score_k/tau))``
per anchor and direction, averaged over the batch (no Z).

Memory (``memory``):
- ``bank`` (default, the paper's): one key per training sample for each model, N x feat_dim float32
  each, keyed by ``batch.indices`` and updated after the loss as
  key_i <- normalize(momentum * key_i + (1 - momentum) * new_i), momentum 0.5. The positive is the
  stored key of sample i itself; ``num_negatives`` (16384) negatives are drawn per anchor.
  Footprint: 2 * N * feat_dim * 4 bytes (+ 8 * N for labels): 51.2 MB for CIFAR-100 (N = 50,000),
  1.31 GB for ImageNet-1k (N = 1,281,167). Per step it also gathers 2 * B * (K + 1) * feat_dim * 4 bytes
  of keys, kept for the backward: 1.07 GB at B = 64, K = 16384.
- ``queue``: a MoCo-style FIFO of the ``queue_size`` most recent (detached) embeddings of each model.
  The positive is the other model's current embedding of the same sample (detached) and every queue
  entry is a negative (K = queue_size). Footprint 2 * Q * feat_dim * 4 bytes: 16.8 MB at Q = 16384,
  whatever the dataset (plus a copy of the same size per step, kept for the backward). No momentum
  applies (the heads are not momentum-averaged).

Negatives (``negatives``): ``other_class`` (default) excludes keys of the anchor's class, as
RepDistiller's CIFAR-100 runs do (its ``CIFAR100InstanceSample``, mode ``exact``, draws negatives among
the other classes' samples; those runs produced the published CRD numbers); ``uniform`` draws from all
samples. Both exclude the anchor's own sample. Labels of memory entries are recorded as samples are seen
(unseen entries count as other-class). Bank negatives are drawn with replacement and redrawn up to 4
times when excluded; the rare remaining excluded draws, and excluded queue entries, are masked out, and
the noise prior then uses each anchor's number of valid negatives.

DDP: the reference keeps one bank per process. Here every process all-gathers the (detached)
embeddings, indices and labels of the step and applies the same update, so all banks and queues stay
identical; Z is averaged over processes. The memory buffers are excluded from DDP's buffer broadcast
(they are already in sync). Training batches must have the same size on every rank (the engine's
training loader drops the last partial batch). All memory is in registered buffers, so it is in
``state_dict()`` and checkpoints, and a resumed run continues with the same memory.
Default weights: ce 1, crd 0.8 (RepDistiller's CIFAR-100 ``-r 1 -a 0 -b 0.8``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from kdlab.core.distributed import all_gather_cat, all_reduce_
from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.methods.base import DistillOutput, StepContext
from kdlab.methods.features import FeatureDistiller, FeatureParams
from kdlab.methods.registry import register_method
from kdlab.models import StagePreset, TapPoint

REDRAWS = 4


def crd_nce_loss(logits: Tensor, num_data: int, log_z: Tensor | float, valid: Tensor | None = None) -> Tensor:
    """CRD's NCE loss for one direction.

    ``logits`` are ``score / tau`` (B x (1 + K)), column 0 the positive; ``valid`` (B x K) masks negatives
    out. ``-(1/B) sum_i [log h_i,pos + sum_k log(1 - h_i,k)]`` with ``h = P / (P + m_i / N)``,
    ``P = exp(logits) / Z`` and ``m_i`` the anchor's number of valid negatives (K without a mask).
    """
    with torch.autocast(logits.device.type, enabled=False):
        log_p = logits.float() - log_z
        batch, columns = log_p.shape
        if valid is None:
            count = torch.full((batch, 1), columns - 1.0, device=log_p.device)
        else:
            count = valid.sum(dim=1, keepdim=True).float()
        log_noise = (count / num_data).log()
        log_denominator = torch.logaddexp(log_p, log_noise)
        log_h_pos = log_p[:, 0] - log_denominator[:, 0]
        log_h_neg = log_noise - log_denominator[:, 1:]
        if valid is not None:
            log_h_neg = torch.where(valid, log_h_neg, torch.zeros_like(log_h_neg))
        return -(log_h_pos.sum() + log_h_neg.sum()) / batch


def crd_infonce_loss(logits: Tensor, valid: Tensor | None = None) -> Tensor:
    """Softmax (InfoNCE) form for one direction: cross-entropy of ``logits`` with the positive at column 0."""
    with torch.autocast(logits.device.type, enabled=False):
        logits = logits.float()
        if valid is not None:
            negatives = logits[:, 1:].masked_fill(~valid, -math.inf)
            logits = torch.cat([logits[:, :1], negatives], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def _random_keys(rows: int, dim: int) -> Tensor:
    """RepDistiller's initialization: uniform in +-sqrt(3 / dim), so rows have about unit norm."""
    bound = math.sqrt(3.0 / dim)
    return torch.rand(rows, dim).mul_(2 * bound).sub_(bound)


class MemoryBank(nn.Module):
    """One momentum-updated key per training sample and model; negatives drawn per anchor."""

    def __init__(self, size: int, dim: int, num_negatives: int, momentum: float, other_class: bool) -> None:
        super().__init__()
        self.size, self.num_negatives, self.momentum = size, num_negatives, momentum
        self.other_class = other_class
        self.register_buffer("student_keys", _random_keys(size, dim))
        self.register_buffer("teacher_keys", _random_keys(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))

    def _excluded(self, rows: Tensor, index: Tensor, targets: Tensor) -> Tensor:
        excluded = rows == index[:, None]
        if self.other_class:
            excluded |= self.labels[rows] == targets[:, None]
        return excluded

    def draw(self, index: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``num_negatives`` rows per anchor and which of them are valid negatives."""
        rows = torch.randint(self.size, (len(index), self.num_negatives), device=index.device)
        for _ in range(REDRAWS):
            redrawn = torch.randint_like(rows, self.size)
            rows = torch.where(self._excluded(rows, index, targets), redrawn, rows)
        return rows, ~self._excluded(rows, index, targets)

    def logits(self, student: Tensor, teacher: Tensor, index: Tensor,
               targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        negatives, valid = self.draw(index, targets)
        rows = torch.cat([index[:, None], negatives], dim=1)
        with torch.autocast(student.device.type, enabled=False):
            student_scores = torch.bmm(self.teacher_keys[rows], student.float().unsqueeze(2)).squeeze(2)
            teacher_scores = torch.bmm(self.student_keys[rows], teacher.float().unsqueeze(2)).squeeze(2)
        return student_scores, teacher_scores, valid

    @torch.no_grad()
    def update(self, student: Tensor, teacher: Tensor, index: Tensor, targets: Tensor) -> None:
        index = all_gather_cat(index)
        for keys, new in ((self.student_keys, student), (self.teacher_keys, teacher)):
            mixed = keys[index] * self.momentum + all_gather_cat(new.float()) * (1 - self.momentum)
            keys.index_copy_(0, index, F.normalize(mixed, dim=1))
        self.labels.index_copy_(0, index, all_gather_cat(targets))


class MemoryQueue(nn.Module):
    """FIFO of the most recent detached embeddings of each model; every entry is a negative."""

    def __init__(self, size: int, dim: int, other_class: bool) -> None:
        super().__init__()
        self.size, self.other_class = size, other_class
        self.register_buffer("student_keys", _random_keys(size, dim))
        self.register_buffer("teacher_keys", _random_keys(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def logits(self, student: Tensor, teacher: Tensor, index: Tensor,
               targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.autocast(student.device.type, enabled=False):
            student, teacher = student.float(), teacher.float()
            student_scores = torch.cat([(student * teacher.detach()).sum(dim=1, keepdim=True),
                                        student @ self.teacher_keys.clone().t()], dim=1)
            teacher_scores = torch.cat([(teacher * student.detach()).sum(dim=1, keepdim=True),
                                        teacher @ self.student_keys.clone().t()], dim=1)
        valid = self.indices[None, :] != index[:, None]
        if self.other_class:
            valid &= self.labels[None, :] != targets[:, None]
        return student_scores, teacher_scores, valid

    @torch.no_grad()
    def update(self, student: Tensor, teacher: Tensor, index: Tensor, targets: Tensor) -> None:
        entries = [all_gather_cat(t)[-self.size:] for t in (student.float(), teacher.float(), index, targets)]
        count = len(entries[2])
        slots = (self.pointer + torch.arange(count, device=self.pointer.device)) % self.size
        for buffer, values in zip((self.student_keys, self.teacher_keys, self.indices, self.labels), entries,
                                  strict=True):
            buffer.index_copy_(0, slots, values)
        self.pointer.copy_((self.pointer + count) % self.size)


class CRDParams(FeatureParams):
    model_config = ConfigDict(extra="forbid")
    feat_dim: int = Field(128, gt=0)
    temperature: float = Field(0.07, gt=0)
    objective: Literal["nce", "infonce"] = "nce"
    memory: Literal["bank", "queue"] = "bank"
    num_negatives: int = Field(16384, gt=0)
    momentum: float = Field(0.5, ge=0, lt=1)
    queue_size: int = Field(16384, gt=0)
    negatives: Literal["other_class", "uniform"] = "other_class"
    z: float | None = Field(None, gt=0)


@register_method("crd")
class ContrastiveRepresentationDistillation(FeatureDistiller):
    """CE plus CRD's two-way contrast between embedding heads on the penultimate features."""

    terms = ("ce", "crd")
    default_weights = {"ce": 1.0, "crd": 0.8}
    Params = CRDParams
    keys_samples = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        p: CRDParams = self.params
        if len(self.student_shapes) != 1 or len(self.teacher_shapes) != 1:
            raise ConfigError("method.params.student_layers: crd embeds one layer per model; name exactly "
                              "one student layer and one teacher layer")
        unused = {"bank": ("queue_size",), "queue": ("num_negatives", "momentum")}[p.memory]
        for key in unused:
            if key in p.model_fields_set:
                raise ConfigError(f"method.params.{key}: not used with memory {p.memory!r}; remove it or set "
                                  f"memory to {'queue' if p.memory == 'bank' else 'bank'!r}")
        self.num_data = self.context.num_train_samples
        if self.num_data < 2:
            raise ConfigError("method.params.memory: crd needs a training split of at least 2 samples")
        self.student_embed = nn.Linear(self.student_shapes[0].numel(), p.feat_dim)
        self.teacher_embed = nn.Linear(self.teacher_shapes[0].numel(), p.feat_dim)
        other_class = p.negatives == "other_class"
        if p.memory == "bank":
            self.memory = MemoryBank(self.num_data, p.feat_dim, p.num_negatives, p.momentum, other_class)
        else:
            self.memory = MemoryQueue(p.queue_size, p.feat_dim, other_class)
        self.register_buffer("z", torch.full((2,), -1.0 if p.z is None else p.z))
        self._z_ready = False
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, [f"memory.{name}" for name, _ in self.memory.named_buffers()])

    def default_taps(self, preset: StagePreset, role: str) -> list[TapPoint]:
        return [preset.embedding]

    @staticmethod
    def _embed(head: nn.Linear, features: Tensor) -> Tensor:
        return F.normalize(head(features.flatten(1)).float(), dim=1)

    @torch.no_grad()
    def _log_z(self, student_logits: Tensor, teacher_logits: Tensor, valid: Tensor) -> Tensor:
        """log Z per direction; Z is estimated once, on the first batch, unless fixed or restored."""
        if not self._z_ready:
            if not bool((self.z > 0).all()):
                mask = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
                means = torch.stack([(logits.exp() * mask).sum() / mask.sum()
                                     for logits in (student_logits, teacher_logits)])
                all_reduce_(means, "mean")
                self.z.copy_(means * self.num_data)
            self._z_ready = True
        return self.z.log()

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        out = self.run_models(batch)
        p: CRDParams = self.params
        student = self._embed(self.student_embed, out.student_features[0])
        teacher = self._embed(self.teacher_embed, out.teacher_features[0])
        student_scores, teacher_scores, valid = self.memory.logits(student, teacher, batch.indices,
                                                                   batch.targets)
        student_logits, teacher_logits = student_scores / p.temperature, teacher_scores / p.temperature
        if p.objective == "nce":
            log_z = self._log_z(student_logits.detach(), teacher_logits.detach(), valid)
            crd = (crd_nce_loss(student_logits, self.num_data, log_z[0], valid)
                   + crd_nce_loss(teacher_logits, self.num_data, log_z[1], valid))
        else:
            crd = crd_infonce_loss(student_logits, valid) + crd_infonce_loss(teacher_logits, valid)
        if self.training:
            self.memory.update(student.detach(), teacher.detach(), batch.indices, batch.targets)
        return DistillOutput({"ce": self.label_loss(out.student_logits, batch.targets), "crd": crd},
                             out.student_logits)
