"""BSS: knowledge distillation with boundary supporting samples (Heo, Lee, Yun & Choi, AAAI 2019,
"Knowledge Distillation with Adversarial Samples Supporting Decision Boundary").

Besides KD on the clean batch x, the student is distilled on samples x_hat that a targeted attack on
the *teacher* moves toward the decision boundary between the true class y and a sampled class k:

    L = w_ce * CE(z_s(x), y) + w_kd * a(e) * S(x) + w_bss * b(e) * S(x_hat)
    S(.) = (1/n) * sum_i H( softmax(z_t,i / T), softmax(z_s,i / T) )     (soft-target cross-entropy)

Per batch (the official code, ``bhheo/BSS_distillation``, by the paper's authors, is the default):

1. Base samples: those the teacher classifies as y (``candidates="teacher"``); if more than K
   (``attack_size``, 64), the K with the largest distillation score ``sum_{c != y} (p_t,c - p_s,c)^2``
   (softmax at T = 1).
2. Target class k: drawn from the teacher's non-top-1 classes with probability proportional to the
   teacher's softmax.
3. Attack, on the frozen teacher, ``steps`` (10) times: with the score s (logits) and the gradient
   g = d(s_k - s_y)/dx of the input, x <- clamp(x + eta * (s_y - s_k + 1e-4) * g / ||g||_2, -2.5, 2.5),
   eta = ``step_size`` (0.3); a sample stops moving once the teacher no longer predicts y.
4. a(e) = 1 + 3 * max(0, 1 - e/E) (from 4 to 1), b(e) = 2 * max(0, 1 - (4/3) * e/E) (from 2 to 0 at 75 %
   of training), with e the 1-based epoch of the official loop (floor(progress) + 1) and E the length
   of the training stage in epochs (``params.epochs`` overrides it). No T^2 factor (the official code
   has none).

AberHu's Knowledge-Distillation-Zoo differs; each difference is an option: no clean-KD term and
``b(e) = 0`` for 10 warm-up epochs then ``2 * max(0, 1 - 1.25 * (e-1)/E)`` (``schedule="aberhu"``),
KL instead of the soft cross-entropy (``divergence="kl"``; same gradient, values lower by the teacher's
entropy), candidates correct for both teacher and student (``candidates="both"``), K = 32
(``attack_size``), the attack on softmax probabilities (``attack_space="probs"``). ``t_squared`` adds the
T^2 factor that neither reference uses.

The attack takes input gradients only: the teacher (eval mode, parameters without ``requires_grad``) is
run under ``torch.enable_grad()`` on a detached copy of the inputs and differentiated with
``torch.autograd.grad`` with respect to that copy, so no teacher parameter ever gets a ``.grad``. As in
both references, the attacked samples go through the student in train mode in a separate forward, so
its BatchNorm normalises them with their own statistics and its running statistics see them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdlab.data.batch import Batch
from kdlab.methods.base import Distiller, DistillOutput, StepContext
from kdlab.methods.registry import register_method

ABERHU_WARMUP_EPOCHS = 10


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 3.0,
                     divergence: Literal["cross_entropy", "kl"] = "cross_entropy",
                     t_squared: bool = False) -> Tensor:
    """Batch mean of ``H(p_t, p_s)`` (or ``KL(p_t || p_s)``) at temperature T, optionally times T^2."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    log_ratio = log_p_t - log_p_s if divergence == "kl" else -log_p_s
    loss = (log_p_t.exp() * log_ratio).sum(dim=1).mean()
    return loss * temperature**2 if t_squared else loss


def schedule_weights(progress: float, epochs: float,
                     schedule: Literal["official", "aberhu"] = "official") -> tuple[float, float]:
    """``(a(e), b(e))``: the clean-KD and boundary-sample factors after ``progress`` epochs of ``epochs``."""
    done = math.floor(progress)
    if schedule == "aberhu":
        if done < ABERHU_WARMUP_EPOCHS:
            return 0.0, 0.0
        return 0.0, 2.0 * max(0.0, 1.0 - 1.25 * done / epochs)
    fraction = (done + 1) / epochs
    return 1.0 + 3.0 * max(0.0, 1.0 - fraction), 2.0 * max(0.0, 1.0 - 4.0 / 3.0 * fraction)


def select_base_samples(teacher_logits: Tensor, student_logits: Tensor, targets: Tensor, attack_size: int,
                        candidates: Literal["teacher", "both"] = "teacher") -> Tensor:
    """Indices of the samples to attack: correctly classified ones, the top ``attack_size`` by
    distillation score ``sum_{c != y} (p_t,c - p_s,c)^2`` when there are more."""
    correct = teacher_logits.argmax(dim=1) == targets
    if candidates == "both":
        correct &= student_logits.argmax(dim=1) == targets
    index = correct.nonzero().view(-1)
    if index.numel() <= attack_size:
        return index
    diff = (teacher_logits[index].float().softmax(1) - student_logits[index].float().softmax(1)) ** 2
    score = diff.sum(dim=1) - diff.gather(1, targets[index, None]).squeeze(1)
    return index[score.argsort(descending=True)[:attack_size]]


def sample_attack_classes(teacher_logits: Tensor) -> Tensor:
    """One class per row, drawn from the non-top-1 classes with probability ∝ the teacher's softmax."""
    logits = teacher_logits.float()
    ranked = logits.topk(2, dim=1).indices
    weights = logits.softmax(dim=1).scatter(1, ranked[:, :1], 0.0)
    empty = weights.sum(dim=1) <= 0
    weights[empty, ranked[empty, 1]] = 1.0
    return torch.multinomial(weights, 1).squeeze(1)


def bss_attack(teacher: Callable[[Tensor], Tensor], inputs: Tensor, source: Tensor, target: Tensor,
               steps: int = 10, step_size: float = 0.3, space: Literal["logits", "probs"] = "logits",
               clamp: float | None = 2.5, eps: float = 1e-4) -> Tensor:
    """Move ``inputs`` (predicted ``source`` by ``teacher``) toward class ``target``; detached result.

    Each step ascends ``s_target - s_source`` (logits, or softmax probabilities) with an L2-normalised
    input gradient scaled by ``step_size * (s_source - s_target + eps)``; a sample whose prediction has
    left ``source`` stops moving. Only the input copy gets gradients, never the teacher's parameters.
    """
    x = inputs.detach().clone()
    rows = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            logits = teacher(x).float()
            scores = logits.softmax(dim=1) if space == "probs" else logits
            margin = scores[rows, source] - scores[rows, target]
            (grad,) = torch.autograd.grad(-margin.sum(), x)
        active = logits.detach().argmax(dim=1) == source
        if not bool(active.any()):
            break
        shape = (-1,) + (1,) * (x.dim() - 1)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
        scale = (step_size * active.float() * (margin.detach() + eps)).view(shape)
        x = x.detach() + scale * grad / norm
        if clamp is not None:
            x = x.clamp(-clamp, clamp)
    return x.detach()


class BSSParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: float | None = Field(None, gt=0, description="schedule length E; default: the stage's length")
    temperature: float = Field(3.0, gt=0)
    schedule: Literal["official", "aberhu"] = "official"
    divergence: Literal["cross_entropy", "kl"] = "cross_entropy"
    t_squared: bool = False
    candidates: Literal["teacher", "both"] = "teacher"
    attack_size: int = Field(64, ge=1)
    attack_space: Literal["logits", "probs"] = "logits"
    steps: int = Field(10, ge=1)
    step_size: float = Field(0.3, gt=0)
    clamp: float | None = Field(2.5, gt=0)


@register_method("bss")
class BoundarySupportingSamples(Distiller):
    """Cross-entropy, scheduled KD on the clean batch and scheduled KD on adversarial boundary samples."""

    terms = ("ce", "kd", "bss")
    default_weights = {"ce": 1.0, "kd": 1.0, "bss": 1.0}
    Params = BSSParams

    def _teacher(self, inputs: Tensor) -> Tensor:
        return self.teacher(self.teacher_inputs(inputs))

    def soft_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        p = self.params
        return soft_target_loss(student_logits, teacher_logits, p.temperature, p.divergence, p.t_squared)

    def distill(self, batch: Batch, step: StepContext) -> DistillOutput:
        p = self.params
        x, y = batch.inputs, batch.targets
        teacher_logits = self.teacher_logits(x)
        logits = self.student(x)
        epochs = p.epochs or step.stage.epochs
        kd_factor, bss_factor = schedule_weights(step.stage_progress, epochs, p.schedule)
        bss = torch.zeros((), device=logits.device)
        if bss_factor > 0:
            index = select_base_samples(teacher_logits, logits.detach(), y, p.attack_size, p.candidates)
            if index.numel():
                classes = sample_attack_classes(teacher_logits[index])
                attacked = bss_attack(self._teacher, x[index], y[index], classes, p.steps, p.step_size,
                                      p.attack_space, p.clamp)
                bss = self.soft_loss(self.student(attacked), self.teacher_logits(attacked))
        return DistillOutput(
            {
                "ce": self.label_loss(logits, y),
                "kd": kd_factor * self.soft_loss(logits, teacher_logits),
                "bss": bss_factor * bss,
            },
            logits,
        )
