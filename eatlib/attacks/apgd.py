"""APGD (Croce & Hein, 2020): PGD without a step size to tune, for L-inf and L2, on any objective.

The step size starts at ``2 eps`` and is halved, per sample, at checkpoints where the run stalls: fewer than
``rho`` of the steps since the last checkpoint raised the objective, or the step size was not halved at the
last checkpoint and the best value has not moved since; a halving restarts the sample from its best iterate.
Steps carry momentum (``momentum`` = 0.75 of the new gradient step, the rest the previous move), and the best
iterate seen is returned. Checkpoints at fractions ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} -
0.03, 0.06)`` of the run (the paper's schedule).

``steps`` counts forward-backward passes, as PGD's does: the start plus ``steps - 1`` updates, each new
iterate evaluated (its gradient is the next step's), so APGD-N and PGD-N cost the same.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eatlib.attacks.base import Attack, flat_norm
from eatlib.attacks.objectives import Objective


def checkpoints(steps: int) -> list[int]:
    """The iterations (0-based updates) after which APGD checks progress, for a run of ``steps`` updates."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    # ceil(p * steps), rounded first so that 0.41 * 100 is 41 and not 42.
    points = sorted({math.ceil(round(f * steps, 6)) for f in fractions[1:] if f < 1})
    return [p for p in points if 0 < p < steps]


class APGD(Attack):
    """Auto-PGD: step-size halving at checkpoints, momentum, best iterate kept (see the module docstring).

    ``rho`` is the fraction of improving steps below which a checkpoint halves the step size (0.75);
    ``random_start`` starts from a uniform point of the ball (else from the clean image).
    """

    spec_keys = {"steps": (30, "int", None), "momentum": (0.75, "nonneg", None), "rho": (0.75, "nonneg", None),
                 "random_start": (True, "bool", None)}

    def __init__(self, model: nn.Module, objective: Objective, *, eps: float = 8 / 255, steps: int = 30,
                 norm: str = "linf", momentum: float = 0.75, rho: float = 0.75, random_start: bool = True,
                 **options):
        super().__init__(model, objective, eps=eps, norm=norm, **options)
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not (0 <= momentum <= 1 and 0 <= rho <= 1):
            raise ValueError(f"momentum and rho must be in [0, 1], got {momentum} and {rho}")
        self.steps, self.momentum, self.rho = int(steps), float(momentum), float(rho)
        self.random_start = bool(random_start)

    def _extra_repr(self):
        return ("steps", "momentum", "rho")

    def _step(self, x: torch.Tensor, grad: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """``x`` plus a steepest-ascent step of per-sample length ``size [B,1,1,1]`` (not yet projected)."""
        if self.norm == "linf":
            return x + size * grad.sign()
        return x + size * grad / flat_norm(grad).clamp_min(1e-12)

    def _perturb(self, images, objective):
        box = self.linf_box(images) if self.norm == "linf" else None
        shape = (len(images),) + (1,) * (images.ndim - 1)
        x = self.random_point(images) if self.random_start else images.clone()
        value, grad = self.value_and_grad(x, objective)
        best, best_value = x.clone(), value.clone()
        best_grad = grad.clone()
        size = torch.full(shape, 2 * self.eps, device=images.device, dtype=images.dtype)
        previous = x.clone()
        updates = self.steps - 1
        marks = set(checkpoints(updates))
        improved = torch.zeros(len(images), device=images.device)  # improving steps since the last checkpoint
        since, last_best = 0, best_value.clone()
        halved_last = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for k in range(updates):
            z = self.project(self._step(x, grad, size), images, box)
            a = self.momentum if k > 0 else 1.0  # the first step has no previous move
            moved = x - previous
            previous = x
            x = self.project(x + a * (z - x) + (1 - a) * moved, images, box)
            new_value, grad = self.value_and_grad(x, objective)
            improved += (new_value > value).float()
            value = new_value
            better = value > best_value
            best[better], best_grad[better] = x[better], grad[better]
            best_value = torch.where(better, value, best_value)
            since += 1
            if k + 1 in marks:
                stalled = improved <= self.rho * since
                stalled |= ~halved_last & (best_value <= last_best)
                if bool(stalled.any()):
                    size[stalled] /= 2
                    # Restart the stalled samples from their best iterate; no momentum across the restart.
                    x, grad = x.clone(), grad.clone()
                    x[stalled], grad[stalled] = best[stalled], best_grad[stalled]
                    value = torch.where(stalled, best_value, value)
                    previous = torch.where(stalled.view(shape), x, previous)
                halved_last, last_best = stalled, best_value.clone()
                improved.zero_()
                since = 0
        return best
