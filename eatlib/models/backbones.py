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
from torchvision.models.mobilenetv2 import InvertedResidual

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


def _narrow(net: nn.Module, block: type, width: int) -> int:
    """Rebuild a torchvision ResNet's stages at base width ``width`` (stock: 64) with torchvision's own
    ``_make_layer``, so module names (and the forward) stay torchvision's. Returns the new feature dim."""
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    for i, stage in enumerate(("layer1", "layer2", "layer3", "layer4")):
        blocks = len(getattr(net, stage))
        setattr(net, stage, net._make_layer(block, width * 2**i, blocks, stride=1 if i == 0 else 2))
    for m in net.modules():  # torchvision's init, which __init__ applied only to the stock layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return width * 8 * block.expansion


def _resnet(arch: str, factory: Callable, image_size: int, pretrained: bool, stem: str, width: int):
    stem = _resolve_stem(stem, image_size, "halved", RESNET_STEMS, arch)
    if int(width) != width or width < 1:
        raise ValueError(f"{arch} width must be a positive integer (stock 64), got {width!r}")
    if pretrained and width != 64:
        raise ValueError(f"torchvision has ImageNet weights for {arch} only at width=64, got {width}; "
                         "use width=64 or pretrained=False")
    net = factory(weights=None)
    if pretrained:
        load_imagenet_weights(arch, net)  # before surgery: the stock shapes match the checkpoint
    feature_dim = net.fc.in_features
    if width != 64:
        feature_dim = _narrow(net, type(net.layer1[0]), int(width))
    if stem != "imagenet":
        # A 3x3 stride-1 conv replaces 7x7/2 (which would throw away 3/4 of a 32px image at once); "cifar"
        # also drops the max-pool. The new conv is randomly initialised even when the rest is pretrained.
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        if stem == "cifar":
            net.maxpool = nn.Identity()
    return _ResNetTrunk(net), feature_dim, {"stem": stem, "width": int(width)}


def resnet18(*, image_size: int, pretrained: bool = False, stem: str = "auto", width: int = 64):
    """torchvision ResNet-18 trunk, features ``[B, 8 * width]`` (stock width 64: 512). ``stem``: "imagenet"
    (7x7/2 conv + max-pool), "halved" (3x3/1 conv + max-pool), "cifar" (3x3/1 conv, no max-pool), or "auto"
    (halved at <= 64px). ``width`` < 64 narrows every stage (the 32px CPU profile's ResNet: same depth and
    strides, 1/16 of the multiply-adds at width 16)."""
    return _resnet("resnet18", tv_resnet18, image_size, pretrained, stem, width)


def resnet50(*, image_size: int, pretrained: bool = False, stem: str = "auto", width: int = 64):
    """torchvision ResNet-50 trunk, features ``[B, 32 * width]`` (stock: 2048); ``stem`` and ``width`` as for
    resnet18."""
    return _resnet("resnet50", tv_resnet50, image_size, pretrained, stem, width)


# MobileNetV2 at 32px -------------------------------------------------------------------------------------------
MOBILENET_STEMS = ("imagenet", "small")
# torchvision's inverted-residual stages: expansion t, channels c, blocks n, stride s of the stage's first block
_MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                     (6, 320, 1, 1))
# stride of the stem conv: stock 2 (total stride 32: a 1x1 final map at 32px); small 1 (total 16: 2x2)
_MOBILENET_STEM_STRIDE = {"imagenet": 2, "small": 1}


class _MobileNetTrunk(nn.Module):
    """torchvision MobileNetV2 ``features`` + global average pool (its dropout + classifier are dropped)."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


def _zero_init_residual_branches(features: nn.Module) -> None:
    """Zero the last BN scale of every residual block, so each starts as the identity (Goyal et al. 2017)."""
    for block in features:
        if isinstance(block, InvertedResidual) and block.use_res_connect:
            nn.init.zeros_(block.conv[-1].weight)


def mobilenet_v2(
    *,
    image_size: int,
    pretrained: bool = False,
    width_mult: float = 1.0,
    stem: str = "auto",
    last_conv: bool | None = None,
    zero_init_residual: bool | None = None,
    max_blocks: int | None = None,
):
    """torchvision MobileNetV2 trunk. Features ``[B, 1280 * max(1, width_mult)]`` with the last 1x1 conv,
    else ``[B, 320 * width_mult]`` (rounded to a multiple of 8) from the last linear bottleneck.

    ``stem``: "imagenet" (stock: total stride 32) or "small" (stride-1 stem conv: total stride 16, a 2x2 final
    map at 32px); "auto" = small at <= 64px. ``last_conv`` (default: True for imagenet, False for small) keeps the
    final 1x1 conv to 1280 ReLU6 channels. ``zero_init_residual`` (default: True for small from scratch) zeroes
    the last BN scale of each residual branch. Neither default changes a pretrained stock network.
    ``max_blocks`` caps the inverted-residual blocks of every stage (stock 1-4 per stage, 17 in all; 1: the seven
    stages with one block each), keeping the stages' widths and strides.

    Why the 32px member differs (diagnosed on 32px glyphs, PAL alpha 32, AdamW 1e-3, proxies at 100x lr): the
    stock network, with its 1x1 final map or with a stride-1 stem, stays on the loss plateau ~11.9 where all
    embeddings sit at one point (batch cos 0.99), and training-class NMI stays at chance. Two causes, the stride
    being neither:
    1. Chaotic at init: 17 batch-normalised blocks, with residual branches at full scale, turn an image and the
       same image + 1% noise into features with cos 0.43 (cnn4: 0.999, resnet18: 0.97), so nothing is shared
       within a class. Zero-init residual branches: 0.82 (stem stride makes no difference: 0.43 at stride 8).
    2. The head sits on 1280 non-negative ReLU6 features: Adam moves every head weight by ~lr per step, so the
       input-independent part of the head output grows by ~lr * sum(mean feature) ~ 0.5 per step and swamps
       the rest (|common| 2.6 -> 38 in 60 steps vs 3.8 -> 8.9), collapsing all embeddings to one direction.
       Dropping the last 1x1 conv feeds the head centred, signed bottleneck features: no collapse.
    Both were measured on tiny pattern classes at lr 1e-3 (tests/test_models.py). On glyphs, with per-image affine
    augmentation and lr 3e-3 (params.yaml's pretrain), the opposite choice learns: one block per stage
    (``max_blocks=1``) *with* the last conv reaches test NMI 0.66 after 20 epochs, while without it the loss stays
    on the plateau (test NMI 0.24-0.33 at lr 1e-3 to 1e-2). The glyphs profile therefore sets ``last_conv``.
    """
    stem = _resolve_stem(stem, image_size, "small", MOBILENET_STEMS, "mobilenet_v2")
    last_conv = (stem == "imagenet") if last_conv is None else bool(last_conv)
    if zero_init_residual is None:
        zero_init_residual = stem == "small" and not pretrained
    if pretrained and width_mult != 1.0:
        raise ValueError(
            f"torchvision has ImageNet weights for mobilenet_v2 only at width_mult=1.0, got {width_mult}; "
            "use width_mult=1.0 or pretrained=False"
        )
    if pretrained and zero_init_residual:
        raise ValueError("zero_init_residual=True would overwrite pretrained weights; use one or the other")
    if max_blocks is not None and (int(max_blocks) != max_blocks or max_blocks < 1):
        raise ValueError(f"mobilenet_v2 max_blocks must be a positive integer or None, got {max_blocks!r}")
    if pretrained and max_blocks is not None:
        raise ValueError("torchvision has ImageNet weights for mobilenet_v2 only at full depth; "
                         "use max_blocks=None or pretrained=False")
    stages = [[t, c, min(n, max_blocks or n), s] for t, c, n, s in _MOBILENET_STAGES]
    net = tv_mobilenet_v2(weights=None, width_mult=width_mult, inverted_residual_setting=stages)
    if pretrained:
        load_imagenet_weights("mobilenet_v2", net)
    net.features[0][0].stride = (_MOBILENET_STEM_STRIDE[stem],) * 2
    features = net.features if last_conv else net.features[:-1]
    feature_dim = net.last_channel if last_conv else features[-1].out_channels
    if zero_init_residual:
        _zero_init_residual_branches(features)
    options = {"width_mult": float(width_mult), "stem": stem, "last_conv": last_conv,
               "zero_init_residual": bool(zero_init_residual), "max_blocks": max_blocks}
    return _MobileNetTrunk(features), feature_dim, options


ARCHITECTURES: dict[str, Callable] = {
    "cnn4": cnn4,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
}
