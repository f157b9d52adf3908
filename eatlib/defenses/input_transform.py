"""``input_transform``: deterministic input purification (Guo et al., 2018; Xu et al., 2018).

A chain of transforms applied before the model: ``bit_depth`` (reduce each channel to ``bits`` bits) and ``jpeg``
(encode and decode at ``jpeg_quality`` with torchvision's libjpeg). Both are piecewise constant, so attacks get
the identity's gradient through them (BPDA; see :mod:`eatlib.defenses.inference`): the attack then optimises the
real transformed input, which is what broke these defenses in Athalye et al. (2018).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchvision.io import decode_jpeg, encode_jpeg

from eatlib.defenses.inference import InferenceDefense, straight_through
from eatlib.defenses.registry import register_inference, require


def reduce_bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantise ``x`` in [0,1] to ``2**bits`` levels (no gradient: wrap in :func:`straight_through`)."""
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


@torch.no_grad()
def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress and decompress each image of ``x [B,3,S,S]`` in [0,1] (libjpeg on the CPU)."""
    uint8 = x.detach().mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu()
    decoded = decode_jpeg(encode_jpeg(list(uint8), quality=int(quality)))
    return torch.stack(decoded).to(x.device, x.dtype).div_(255)


TRANSFORMS = ("bit_depth", "jpeg")


@dataclass(frozen=True)
class InputTransformOptions:
    transforms: list[str] = field(default_factory=lambda: ["bit_depth", "jpeg"])  # applied in this order
    bits: int = 4
    jpeg_quality: int = 75

    def __post_init__(self):
        require(bool(self.transforms) and all(t in TRANSFORMS for t in self.transforms), "transforms",
                self.transforms, f"a non-empty list of {TRANSFORMS}")
        require(1 <= self.bits <= 8, "bits", self.bits, "an integer in 1..8")
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "an integer in 1..100")


@register_inference("input_transform", InputTransformOptions)
class InputTransform(InferenceDefense):
    def transform(self, x):
        steps = {"bit_depth": lambda v: reduce_bit_depth(v.detach(), self.options.bits),
                 "jpeg": lambda v: jpeg(v, self.options.jpeg_quality)}
        for name in self.options.transforms:
            x = straight_through(x, steps[name](x))
        return x
