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
from torch.overrides import TorchFunctionMode

from eatlib.attacks.objectives import BatchObjective


def value_and_grad(
    model: nn.Module, objective: BatchObjective, images: torch.Tensor, *, samples: int = 1, amp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective values ``[B]`` (detached) and their input gradient ``[B, C, H, W]`` at ``images``, each
    averaged over ``samples`` passes. One backward per pass keeps memory at one graph. ``amp`` runs the
    model under bf16 autocast (:func:`forward_embeddings`); the objective is computed in float32."""
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
    """``model(x)``, under bf16 autocast when ``amp``, returned in float32.

    On CUDA, plain bf16 autocast. On CPU (AVX-512 BF16 / AMX), bf16 autocast with strided depthwise convolutions
    kept in float32 (:class:`StridedDepthwiseFloat32`): their bf16 input gradient is 5-18x slower than float32
    in oneDNN here, which made MobileNetV2 slower under bf16 than without (benchmarks/engine.py)."""
    if not amp:
        return model(x)
    if x.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x).float()
    if x.device.type != "cpu":
        raise ValueError(f"amp (bf16 autocast) is for CUDA or CPU inputs, got a {x.device.type} tensor")
    with torch.autocast("cpu", dtype=torch.bfloat16), StridedDepthwiseFloat32():
        return model(x).float()


class StridedDepthwiseFloat32(TorchFunctionMode):
    """Inside CPU bf16 autocast, run every strided grouped convolution in float32 (everything else stays bf16).

    Measured on the 2-core AVX-512 BF16 CPU, input gradient of a 3x3 depthwise convolution, batch 250,
    channels-last: stride 1 bf16 8 ms vs float32 39 ms, but stride 2 bf16 71 ms vs float32 15 ms (48 ch, 32px)
    and 70 ms vs 4 ms (96 ch, 16px). With this, a MobileNetV2 (width 0.5) forward-backward goes from 276 ms
    (plain bf16) to 99 ms (float32: 129-142 ms). A torch-function mode, not a module swap, so it covers the
    training model as well as a folded copy and leaves every model, state dict and checkpoint as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.conv2d or func is torch.conv2d:
            bound = _conv_arguments(*args, **kwargs)
            stride = bound["stride"]
            if bound["groups"] > 1 and (stride > 1 if isinstance(stride, int) else max(stride) > 1):
                x, weight, bias = bound["input"], bound["weight"], bound["bias"]
                with torch.autocast("cpu", enabled=False):
                    return func(x.float(), weight.float(), None if bias is None else bias.float(),
                                *args[3:], **{k: v for k, v in kwargs.items() if k not in ("input", "weight", "bias")})
        return func(*args, **kwargs)


def _conv_arguments(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """``conv2d``'s arguments by name (its positional order)."""
    return {"input": input, "weight": weight, "bias": bias, "stride": stride, "groups": groups}
