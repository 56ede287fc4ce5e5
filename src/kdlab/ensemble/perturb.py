"""Diversifying input perturbation for ensemble distillation (Nam, Lee, Heo & Lee, ICML 2022).

Before a distillation step the inputs take a normalized gradient-ascent step toward points where the
teachers disagree and the student's BatchEnsemble members agree ("TDiv-SDiv" in the reference code
``train_KD_LatentBE_TDivSDiv.py``). With a random pair of distinct members (i, j), the same pair for
teachers and student:

    TDiv(x) = mean_b H( p_Tj(x_b), p_Ti(x_b) ),   SDiv(x) = mean_b H( p_Sj(x_b), p_Si(x_b) )
    J(x)    = TDiv(x) - SDiv(x)

where H(p, q) = -sum_k p_k log q_k, the target distribution (index j) is held constant (no gradient),
the temperature is 1 and the student runs in eval mode. The step, in [0, 1] pixel units, is

    g = dJ/dx_pixel,   delta_b = eps * sqrt(D) * g_b / ||g_b||_2,   x <- clip(x + delta, 0, 1)

per example b, with D the number of input values per example: the per-pixel RMS of the step is
``eps`` (1/255 in the reference). One step, no random start. Inputs in kdlab are normalized
(``x_norm = (x_pixel - mean) / std`` per channel), so the step is taken in pixel units and mapped
back: ``dJ/dx_pixel = dJ/dx_norm / std`` and ``x_norm += delta / std``, clipped to
``[-mean/std, (1 - mean)/std]``.

ODS variant (option): the objective is ``J(x) = mean_b w_b . z_Ti(x_b)`` for one random teacher i
and random weights ``w_b ~ U(-1, 1)^K`` (Output Diversified Sampling, Tashiro, Song & Ermon, NeurIPS
2020), the input perturbation of the authors' earlier ensemble-distillation paper (Nam, Yoon, Lee &
Lee, NeurIPS 2021). Which teacher output that paper perturbs is not verified; this is our reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def divergence_objective(teacher_logits: Tensor, student_logits: Tensor | None,
                         pair: tuple[int, int]) -> Tensor:
    """``J = TDiv - SDiv`` for member pair ``(i, j)``; (M, B, K) logits; no SDiv when no student."""
    i, j = pair

    def cross_entropy(logits: Tensor) -> Tensor:
        target = F.softmax(logits[j].float(), dim=-1).detach()
        return -(target * F.log_softmax(logits[i].float(), dim=-1)).sum(dim=-1).mean()

    objective = cross_entropy(teacher_logits)
    if student_logits is not None:
        objective = objective - cross_entropy(student_logits)
    return objective


def ods_objective(teacher_logits: Tensor, member: int, weights: Tensor) -> Tensor:
    """``mean_b w_b . z_{T_member}(x_b)``: a random direction in one teacher's logit space."""
    return (teacher_logits[member].float() * weights).sum(dim=-1).mean()


class PixelRange:
    """The per-channel map between normalized inputs and [0, 1] pixels: ``x = (pixel - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def _shape(self, value: Tensor, inputs: Tensor) -> Tensor:
        return value.to(inputs.device).view(1, -1, *([1] * (inputs.dim() - 2)))

    def std_like(self, inputs: Tensor) -> Tensor:
        return self._shape(self.std, inputs)

    def bounds_like(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Normalized values of pixels 0 and 1, shaped to broadcast against ``inputs``."""
        return self._shape(-self.mean / self.std, inputs), self._shape((1 - self.mean) / self.std, inputs)


def ascent_step(inputs: Tensor, grad: Tensor, step_size: float, pixels: PixelRange,
                clamp: bool = True) -> Tensor:
    """One normalized step: per-example pixel-space L2 norm ``step_size * sqrt(D)``, then clip."""
    std = pixels.std_like(inputs)
    pixel_grad = grad.float() / std
    flat = pixel_grad.flatten(1)
    norm = flat.norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (inputs.dim() - 1)))
    delta = step_size * math.sqrt(flat.shape[1]) * pixel_grad / norm
    stepped = inputs.float() + delta / std
    if clamp:
        lower, upper = pixels.bounds_like(inputs)
        stepped = torch.maximum(torch.minimum(stepped, upper), lower)
    return stepped.to(inputs.dtype)


def perturb(inputs: Tensor, objective: Callable[[Tensor], Tensor], *, step_size: float, steps: int,
            pixels: PixelRange, clamp: bool = True) -> Tensor:
    """``steps`` normalized gradient-ascent steps of ``objective`` on ``inputs`` (detached result).

    ``objective`` maps a batch to a scalar; its gradient is taken with respect to the inputs only
    (parameters' ``.grad`` are not touched). ``step_size`` is the per-pixel RMS of each step in [0, 1]
    pixel units (the reference: 1/255, one step).
    """
    x = inputs.detach()
    if step_size == 0 or steps == 0:
        return x
    for _ in range(steps):
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(objective(x), x)
        x = ascent_step(x.detach(), grad, step_size, pixels, clamp)
    return x
