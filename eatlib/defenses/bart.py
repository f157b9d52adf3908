"""``bart``: Barrage of Random Transforms (Raff et al., 2019), a small pool for 32px-to-224px images.

Every forward pass draws ``num_transforms`` distinct transforms from the pool ``transforms`` and applies them in
a random order, each with random parameters (drawn per batch; ``resize_pad`` and ``noise`` per image). Raff et al.
draw per image from a pool of 25 (several need OpenCV or scikit-image denoisers); this pool keeps transforms that
run batched in torch: colour precision reduction and JPEG (identity gradient, BPDA), Gaussian noise, random
resize-and-pad, Gaussian blur, contrast and partial greyscale. ``randomized``: evaluate with EOT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torchvision.transforms.v2 import functional as TF

from eatlib.defenses.inference import InferenceDefense, straight_through, uniform
from eatlib.defenses.input_transform import jpeg, reduce_bit_depth
from eatlib.defenses.randomization import random_resize_pad
from eatlib.defenses.registry import register_inference, require

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _bit_depth(x, gen):
    bits = int(torch.randint(3, 7, (), generator=gen, device=gen.device))
    return straight_through(x, reduce_bit_depth(x.detach(), bits))


def _jpeg(x, gen):
    return straight_through(x, jpeg(x, int(torch.randint(55, 96, (), generator=gen, device=gen.device))))


def _noise(x, gen):
    sigma = uniform(0.005, 0.04, gen)
    noise = torch.randn(x.shape, generator=gen, device=gen.device).to(x.device, x.dtype)
    return (x + sigma.to(x.device) * noise).clamp(0, 1)


def _resize_pad(x, gen):
    return random_resize_pad(x, 0.85, gen)


def _blur(x, gen):
    sigma = float(uniform(0.3, 1.0, gen))
    return TF.gaussian_blur(x, [3, 3], [sigma, sigma])


def _contrast(x, gen):
    factor = uniform(0.7, 1.3, gen).to(x.device, x.dtype)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0, 1)


def _greyscale(x, gen):
    amount = uniform(0.0, 1.0, gen).to(x.device, x.dtype)
    grey = TF.rgb_to_grayscale(x, num_output_channels=3)
    return (1 - amount) * x + amount * grey


POOL: dict[str, Transform] = {
    "bit_depth": _bit_depth,
    "jpeg": _jpeg,
    "noise": _noise,
    "resize_pad": _resize_pad,
    "blur": _blur,
    "contrast": _contrast,
    "greyscale": _greyscale,
}


@dataclass(frozen=True)
class BaRTOptions:
    transforms: list[str] = field(default_factory=lambda: list(POOL))
    num_transforms: int = 3
    seed: int = 0

    def __post_init__(self):
        require(bool(self.transforms) and all(t in POOL for t in self.transforms)
                and len(set(self.transforms)) == len(self.transforms),
                "transforms", self.transforms, f"a non-empty list of distinct names from {sorted(POOL)}")
        require(1 <= self.num_transforms <= len(self.transforms), "num_transforms", self.num_transforms,
                f"an integer in 1..{len(self.transforms)} (the size of the pool)")


@register_inference("bart", BaRTOptions)
class BaRT(InferenceDefense):
    randomized = True

    def chosen(self, generator: torch.Generator) -> list[str]:
        """The transforms of one forward pass, in the order applied."""
        order = torch.randperm(len(self.options.transforms), generator=generator, device=generator.device)
        return [self.options.transforms[i] for i in order[: self.options.num_transforms].tolist()]

    def transform(self, x):
        generator = self.generator(x.device)
        for name in self.chosen(generator):
            x = POOL[name](x, generator)
        return x
