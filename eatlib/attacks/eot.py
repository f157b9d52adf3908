"""The gradient oracle of every optimiser, with expectation over transformation (EOT).

A randomised model (random resize-and-pad, noise injection, ...) gives a different embedding at every call;
EOT (Athalye et al., 2018) follows the expected objective: values and input gradients are averaged over
``samples`` independent forward passes. ``samples=1`` is the plain white-box gradient of a deterministic model.

Gradients are taken with ``torch.autograd.grad`` with respect to the input only: parameter ``.grad`` fields
stay untouched and autograd skips the weight gradients entirely.
"""

from __future__ import annotations

import torch
from torch import nn

from eatlib.attacks.objectives import BatchObjective


def value_and_grad(
    model: nn.Module, objective: BatchObjective, images: torch.Tensor, *, samples: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective values ``[B]`` (detached) and their input gradient ``[B, C, H, W]`` at ``images``, each
    averaged over ``samples`` passes. One backward per pass keeps memory at one graph."""
    x = images.detach().requires_grad_(True)
    total_value, total_grad = None, None
    for _ in range(samples):
        value = objective(model(x))
        (grad,) = torch.autograd.grad(value.sum(), x)
        value = value.detach()
        total_value = value if total_value is None else total_value.add_(value)
        total_grad = grad if total_grad is None else total_grad.add_(grad)
    if samples > 1:
        total_value.div_(samples)
        total_grad.div_(samples)
    return total_value, total_grad


@torch.no_grad()
def expected_value(
    model: nn.Module, objective: BatchObjective, images: torch.Tensor, *, samples: int = 1
) -> torch.Tensor:
    """Objective values ``[B]`` at ``images`` averaged over ``samples`` passes, without gradients."""
    total = objective(model(images))
    for _ in range(samples - 1):
        total = total + objective(model(images))
    return total / samples
