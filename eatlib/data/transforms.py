"""Image transforms for the file-based (paper) datasets. Outputs are FloatTensor[3,S,S] in [0,1]; no
normalisation here (the models normalise internally, so attacks work in pixel space).

Two protocols:
- "paper" (224 px, the DML standard): train = resize shorter side to 256, RandomResizedCrop 224, horizontal
  flip; test = resize 256, centre crop 224. For another image_size S the 256 becomes round(S * 256 / 224).
- "small" (32 px CPU runs): resize the whole image to S x S; train adds light augmentation when asked
  (RandomResizedCrop with scale (0.7, 1) and a horizontal flip).
"""

from __future__ import annotations

from torchvision import transforms as T

PROTOCOLS = ("paper", "small")


def default_protocol(image_size: int) -> str:
    """The protocol for image_size: "paper" from 128 px up (crops of natural images), else "small"."""
    return "paper" if image_size >= 128 else "small"


def build_transform(image_size: int, *, train: bool, protocol: str | None = None, augment: bool = True):
    """The transform for one split. protocol: "paper" | "small" | None (= default_protocol(image_size)).
    augment: for train only; False gives the test transform (e.g. to embed training images)."""
    protocol = default_protocol(image_size) if protocol is None else protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown transform protocol {protocol!r}; allowed: {PROTOCOLS}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    augmenting = train and augment
    if protocol == "paper":
        resize = round(image_size * 256 / 224)
        if augmenting:
            steps = [T.Resize(resize), T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
        else:
            steps = [T.Resize(resize), T.CenterCrop(image_size)]
    else:
        if augmenting:
            steps = [T.RandomResizedCrop(image_size, scale=(0.7, 1.0)), T.RandomHorizontalFlip()]
        else:
            steps = [T.Resize((image_size, image_size))]
    return T.Compose([*steps, T.ToTensor()])
