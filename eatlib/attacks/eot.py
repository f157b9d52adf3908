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
    model: nn.Module, objective: BatchObjective, images: torch.Tensor, *, samples: int = 1, amp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective values ``[B]`` (detached) and their input gradient ``[B, C, H, W]`` at ``images``, each
    averaged over ``samples`` passes. One backward per pass keeps memory at one graph. ``amp`` runs the
    model under bf16 autocast (CUDA inputs only); the objective is computed in float32."""
    x = images.detach().requires_grad_(True)
    total_value, total_grad = None, None
    for _ in range(samples):
        with torch.enable_grad():  # also when called under no_grad (evaluation code)
            value = objective(forward_embeddings(model, x, amp))
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
    model: nn.Module, objective: BatchObjective, images: torch.Tensor, *, samples: int = 1, amp: bool = False
) -> torch.Tensor:
    """Objective values ``[B]`` at ``images`` averaged over ``samples`` passes, without gradients."""
    total = objective(forward_embeddings(model, images, amp))
    for _ in range(samples - 1):
        total = total + objective(forward_embeddings(model, images, amp))
    return total / samples


def forward_embeddings(model: nn.Module, x: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """``model(x)``, under bf16 autocast when ``amp`` (CUDA only), returned in float32."""
    if not amp:
        return model(x)
    if x.device.type != "cuda":
        raise ValueError("amp (bf16 autocast) is for CUDA inputs; leave it off on CPU")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return model(x).float()
