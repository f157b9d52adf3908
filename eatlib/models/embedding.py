"""EmbeddingNet: pixel-space images [B, 3, S, S] in [0, 1] -> L2-normalised embeddings [B, D]."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eatlib.models.backbones import ARCHITECTURES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Slack for float rounding in the [0, 1] input check; anything further out is a caller bug (0-255 pixels,
# images already normalised, an attack that forgot to clamp).
PIXEL_RANGE_SLACK = 1e-4


def check_pixel_range(x: torch.Tensor) -> None:
    """Raise if ``x`` is not a batch of 3-channel images ``[B, 3, H, W]`` in [0, 1] pixel space."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(x.shape)}")
    if torch.compiler.is_compiling() or x.numel() == 0:
        return
    low, high = torch.aminmax(x.detach())
    if low < -PIXEL_RANGE_SLACK or high > 1 + PIXEL_RANGE_SLACK:
        raise ValueError(
            f"images must be in [0, 1] pixel space (the model normalises internally), got values in "
            f"[{float(low):.3g}, {float(high):.3g}]; divide uint8 images by 255, do not apply ImageNet "
            "normalisation yourself, and clamp perturbed images to [0, 1]"
        )


class EmbeddingNet(nn.Module):
    """Backbone + linear embedding head + L2 normalisation, with ImageNet normalisation inside.

    forward(x [B, 3, S, S] float in [0, 1]) -> [B, D] with unit L2 norm. Inputs outside [0, 1] raise a
    ValueError (see ``check_pixel_range``): attacks and defenses work in pixel space and must clamp.
    ``config`` is a dict of plain values with ``build_model(**config)`` rebuilding the same architecture.
    Build it with :func:`build_model`.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, embedding_dim: int, config: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, embedding_dim)
        # Constants, not state: non-persistent buffers follow .to(device) but stay out of checkpoints.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.embedding_dim = embedding_dim
        self.config = dict(config)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[B, F]`` (before the head) of pixel-space images ``[B, 3, S, S]``."""
        check_pixel_range(x)
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)


def build_model(
    arch: str, *, embedding_dim: int = 128, image_size: int = 32, pretrained: bool = False, **arch_options
) -> EmbeddingNet:
    """Build an :class:`EmbeddingNet` on the backbone ``arch`` (a key of ``ARCHITECTURES``).

    ``image_size`` picks the stem when an architecture's ``stem`` option is "auto" (small-input stems at
    <= 64px); the network itself accepts other sizes. ``pretrained=True`` loads torchvision's ImageNet weights
    into the backbone (the head is always new). ``arch_options`` are backbone keyword options, e.g.
    ``width_mult=0.5`` for mobilenet_v2, ``stem="cifar"`` for resnet18, ``width=64`` for cnn4.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    if int(embedding_dim) != embedding_dim or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    builder = ARCHITECTURES[arch]
    allowed = [p for p in inspect.signature(builder).parameters if p not in ("image_size", "pretrained")]
    unknown = sorted(set(arch_options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {arch}; its options are {allowed}")
    backbone, feature_dim, options = builder(image_size=int(image_size), pretrained=bool(pretrained), **arch_options)
    config = {
        "arch": arch,
        "embedding_dim": int(embedding_dim),
        "image_size": int(image_size),
        "pretrained": bool(pretrained),
        **options,
    }
    return EmbeddingNet(backbone, feature_dim, int(embedding_dim), config)
