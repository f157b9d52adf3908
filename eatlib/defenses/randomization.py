"""``randomization``: random resizing and padding (Xie et al., 2018), at the model's input size.

Xie et al. resize a 299px image to a random size in [299, 331) and pad it at a random position to 331px, i.e. the
content fills a random fraction of 90-100% of the canvas. Here the canvas stays the model's input size S: each
image is resized to a random r in ``[ceil(min_scale * S), S]`` pixels (bilinear) and placed at a random offset
on a black S x S canvas, in one vectorised ``grid_sample`` (differentiable, so attacks need only EOT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eatlib.defenses.inference import InferenceDefense
from eatlib.defenses.registry import register_inference, require


def random_resize_pad(x: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x [B,C,S,S]`` shrunk to a random size and padded back to S at a random position."""
    batch, _, size, _ = x.shape
    device = generator.device
    low = max(1, math.ceil(min_scale * size))
    sizes = torch.randint(low, size + 1, (batch,), generator=generator, device=device).to(x.dtype)
    free = size - sizes  # free pixels along each axis
    offsets = (torch.rand(2, batch, generator=generator, device=device).to(x.dtype) * (free + 1)).floor()
    scale = sizes / size
    centres = -1 + (2 * offsets + sizes) / size  # [2, B]: the content box's centre in normalised coordinates
    theta = torch.zeros(batch, 2, 3, dtype=x.dtype, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, 0, 2], theta[:, 1, 2] = -centres[0] / scale, -centres[1] / scale
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class RandomizationOptions:
    min_scale: float = 0.9  # Xie et al.: 299 / 331
    seed: int = 0

    def __post_init__(self):
        require(0 < self.min_scale <= 1, "min_scale", self.min_scale, "0 < value <= 1")


@register_inference("randomization", RandomizationOptions)
class Randomization(InferenceDefense):
    randomized = True

    def transform(self, x):
        return random_resize_pad(x, self.options.min_scale, self.generator(x.device))
