"""Backbones: normalised images [B, 3, S, S] -> features [B, F]. One builder per architecture, in ``ARCHITECTURES``.

A builder is called as ``builder(image_size=..., pretrained=..., **options)`` and returns
``(module, feature_dim, options)``, where ``options`` holds every option with its resolved value (e.g. a stem of
"auto" replaced by the stem actually built), so the config records what was built, not what was asked for.

Small inputs (image_size <= 64) get a small-input stem. The choices were measured on 32px glyphs with
Proxy-Anchor on a 2-core CPU (numbers in benchmarks/throughput.py and the models report):
- ResNet: "cifar" (3x3 stride-1 conv, no max-pool; final map 4x4) learns best but trains ~10x slower than the
  ImageNet stem; "halved" (3x3 stride-1 conv + max-pool; final map 2x2) is the 32px default.
- MobileNetV2: see ``mobilenet_v2`` for why the stock network does not learn at 32px and what fixes it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models import resnet50 as tv_resnet50

from eatlib.models.pretrained import load_imagenet_weights

SMALL_INPUT_MAX_SIZE = 64  # image_size at or below which "auto" picks the small-input stem
RESNET_STEMS = ("imagenet", "halved", "cifar")


def _no_pretrained(arch: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"{arch} has no pretrained weights; build it with pretrained=False")


def cnn4(*, image_size: int, pretrained: bool = False, width: int = 32):
    """Four conv3x3-BN-ReLU blocks (width, 2w, 4w, 8w channels), 2x2 max-pool after the first three, global
    average pool. The fast backbone for 32px CPU runs. Features: ``[B, 8 * width]``."""
    _no_pretrained("cnn4", pretrained)
    if width < 1:
        raise ValueError(f"cnn4 width must be a positive integer, got {width}")
    channels = [3, width, 2 * width, 4 * width, 8 * width]
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [
            nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[i + 1]),
            nn.ReLU(inplace=True),
        ]
        if i < 3:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), channels[-1], {"width": width}


def _resolve_stem(stem: str, image_size: int, small: str, allowed: tuple[str, ...], arch: str) -> str:
    if stem == "auto":
        return small if image_size <= SMALL_INPUT_MAX_SIZE else "imagenet"
    if stem not in allowed:
        raise ValueError(f"{arch} stem must be 'auto' or one of {allowed}, got {stem!r}")
    return stem


class _ResNetTrunk(nn.Module):
    """torchvision ResNet without its classifier: images -> pooled features [B, F]."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.resnet = resnet
        self.resnet.fc = nn.Identity()

    def forward(self, x):
        return self.resnet(x)


def _resnet(arch: str, factory: Callable, image_size: int, pretrained: bool, stem: str):
    stem = _resolve_stem(stem, image_size, "halved", RESNET_STEMS, arch)
    net = factory(weights=None)
    if pretrained:
        load_imagenet_weights(arch, net)  # before surgery: the stock shapes match the checkpoint
    feature_dim = net.fc.in_features
    if stem != "imagenet":
        # A 3x3 stride-1 conv replaces 7x7/2 (which would throw away 3/4 of a 32px image at once); "cifar"
        # also drops the max-pool. The new conv is randomly initialised even when the rest is pretrained.
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        if stem == "cifar":
            net.maxpool = nn.Identity()
    return _ResNetTrunk(net), feature_dim, {"stem": stem}


def resnet18(*, image_size: int, pretrained: bool = False, stem: str = "auto"):
    """torchvision ResNet-18 trunk, features ``[B, 512]``. ``stem``: "imagenet" (7x7/2 conv + max-pool),
    "halved" (3x3/1 conv + max-pool), "cifar" (3x3/1 conv, no max-pool), or "auto" (halved at <= 64px)."""
    return _resnet("resnet18", tv_resnet18, image_size, pretrained, stem)


def resnet50(*, image_size: int, pretrained: bool = False, stem: str = "auto"):
    """torchvision ResNet-50 trunk, features ``[B, 2048]``; ``stem`` as for resnet18."""
    return _resnet("resnet50", tv_resnet50, image_size, pretrained, stem)


# MobileNetV2 at 32px -------------------------------------------------------------------------------------------
MOBILENET_STEMS = ("imagenet", "small")
# torchvision's inverted-residual stages: expansion t, channels c, blocks n, stride s of the first block
_MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                     (6, 320, 1, 1))
# stride of the stem conv, then of each stage: stock (total 32) and small-input (total 8: a 4x4 map at 32px)
_MOBILENET_STRIDES = {"imagenet": (2, 1, 2, 2, 2, 1, 2, 1), "small": (1, 1, 1, 2, 2, 1, 2, 1)}


class _MobileNetTrunk(nn.Module):
    """torchvision MobileNetV2 ``features`` + global average pool (its dropout + classifier are dropped)."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


def mobilenet_v2(*, image_size: int, pretrained: bool = False, width_mult: float = 1.0, stem: str = "auto"):
    """torchvision MobileNetV2 trunk, features ``[B, 1280 * max(1, width_mult)]``.

    ``stem``: "imagenet" (stock strides, total 32) or "small" (total stride 8), "auto" = small at <= 64px.
    """
    stem = _resolve_stem(stem, image_size, "small", MOBILENET_STEMS, "mobilenet_v2")
    if pretrained and width_mult != 1.0:
        raise ValueError(
            f"torchvision has ImageNet weights for mobilenet_v2 only at width_mult=1.0, got {width_mult}; "
            "use width_mult=1.0 or pretrained=False"
        )
    strides = _MOBILENET_STRIDES[stem]
    stages = [[t, c, n, s] for (t, c, n, _), s in zip(_MOBILENET_STAGES, strides[1:], strict=True)]
    net = tv_mobilenet_v2(weights=None, width_mult=width_mult, inverted_residual_setting=stages)
    if pretrained:
        load_imagenet_weights("mobilenet_v2", net)  # strides do not change any weight shape
    net.features[0][0].stride = (strides[0], strides[0])
    return _MobileNetTrunk(net.features), net.last_channel, {"width_mult": float(width_mult), "stem": stem}


ARCHITECTURES: dict[str, Callable] = {
    "cnn4": cnn4,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
}
