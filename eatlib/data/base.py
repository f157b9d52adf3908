"""Dataset containers shared by every dataset of the registry.

Two kinds of `ImageDataset`:
- `TensorImageDataset`: images held in memory as a uint8 tensor [N,3,S,S] (glyphs); `ds.images` lets training
  loops slice whole batches without a DataLoader.
- `FileImageDataset`: image files decoded lazily with PIL and passed through a torchvision transform (the paper
  datasets).

Both return `(FloatTensor[3,S,S] in [0,1], int label)` and carry `labels` (int64, contiguous 0..C-1 within the
split), `num_classes` and `class_names` (the original class of each label, as text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


def contiguous_labels(raw_labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary class ids to 0..C-1 in ascending order of the ids.

    Returns (labels int64 [N], class_ids [C]) with class_ids[labels[i]] == raw_labels[i].
    """
    class_ids, labels = np.unique(np.asarray(raw_labels), return_inverse=True)
    return labels.astype(np.int64), class_ids


class ImageDataset(Dataset):
    """A labelled image set: `ds[i] -> (FloatTensor[3,S,S] in [0,1], int label)`.

    Attributes: `labels` (np.ndarray int64 [N], contiguous 0..C-1), `num_classes`, `class_names` (list of C str),
    `roles` (None, or np.ndarray of str [N] where a split joins several official parts, see FileImageDataset).
    """

    labels: np.ndarray
    class_names: list[str]
    roles: np.ndarray | None = None

    def __init__(self, labels: np.ndarray, class_names: Sequence[str]):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        num_classes = len(class_names)
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1} (one per class name)")
        if len(np.unique(labels)) != num_classes:
            raise ValueError(f"every one of the {num_classes} classes needs at least one image")
        self.labels = labels
        self.class_names = list(class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(images={len(self)}, classes={self.num_classes})"


class TensorImageDataset(ImageDataset):
    """In-memory images: `images` uint8 tensor [N,3,S,S]; `ds[i]` converts one image to float in [0,1]."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, class_names: Sequence[str]):
        super().__init__(labels, class_names)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a uint8 tensor [N,3,S,S], got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] != len(self.labels):
            raise ValueError(f"{images.shape[0]} images but {len(self.labels)} labels")
        self.images = images

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float() / 255.0, int(self.labels[index])


class FileImageDataset(ImageDataset):
    """Image files decoded lazily: `paths[i]` is opened with PIL, converted to RGB and passed to `transform`
    (a torchvision transform ending in ToTensor-like output: FloatTensor[3,S,S] in [0,1]).

    `roles` (optional, np.ndarray of str [N]): each image's part of an official partition where one split has
    several, e.g. In-Shop's test split: "query" / "gallery". None elsewhere.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: np.ndarray,
        class_names: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
        roles: Sequence[str] | None = None,
    ):
        super().__init__(labels, class_names)
        if len(paths) != len(self.labels):
            raise ValueError(f"{len(paths)} paths but {len(self.labels)} labels")
        if roles is not None and len(roles) != len(self.labels):
            raise ValueError(f"{len(roles)} roles but {len(self.labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.roles = None if roles is None else np.asarray(roles, dtype=str)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as image:
            tensor = self.transform(image.convert("RGB"))
        return tensor, int(self.labels[index])


@dataclass(frozen=True)
class DataSplits:
    """The three splits of a dataset. `val` holds classes carved out of the training classes (never test
    classes); `train` holds the remaining training classes; `test` holds the unseen (zero-shot) test classes."""

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset

    def __repr__(self) -> str:
        return f"DataSplits(train={self.train!r}, val={self.val!r}, test={self.test!r})"


def carve_val_classes(train_class_ids: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Pick round(val_fraction * C) of the training classes (at least one when val_fraction > 0), seeded.

    Returns the chosen class ids (a subset of `train_class_ids`), sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train_class_ids = np.asarray(train_class_ids)
    num_val = int(round(val_fraction * len(train_class_ids)))
    if val_fraction > 0:
        num_val = max(1, num_val)
    if num_val >= len(train_class_ids):
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training class out of {len(train_class_ids)}; lower it"
        )
    rng = np.random.default_rng([seed, 0x7A1])  # its own stream: independent of how images were generated
    return np.sort(rng.choice(train_class_ids, size=num_val, replace=False))
