"""Datasets: a registry of loaders that all return `DataSplits` (train / val / test `ImageDataset`s).

- "cub200", "cars196", "inshop", "sop": the paper datasets, read from `<root>/<name>/` in their official layouts.

`load_splits(name, root, ...)` is the one entry point; `ClassBalancedBatchSampler` makes P x m batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .base import DataSplits, FileImageDataset, ImageDataset, TensorImageDataset
from .cars196 import load_cars196
from .cub200 import load_cub200
from .inshop import load_inshop
from .layout import DatasetLayoutError
from .sampler import ClassBalancedBatchSampler
from .sop import load_sop
from .transforms import build_transform

DATASETS: dict[str, Callable[..., DataSplits]] = {
    "cub200": load_cub200,
    "cars196": load_cars196,
    "inshop": load_inshop,
    "sop": load_sop,
}


def load_splits(
    name: str,
    root: str | os.PathLike = "data",
    *,
    image_size: int = 32,
    seed: int = 0,
    val_fraction: float = 0.1,
    **options,
) -> DataSplits:
    """Load dataset `name` as DataSplits.

    root: the data folder (the paper datasets live in `<root>/<name>/`). seed: the choice of validation
    classes. val_fraction: share of the training classes moved to `val`. options: dataset-specific (paper
    datasets: protocol, augment); an unknown option is an error listing the allowed ones.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
    return DATASETS[name](root, image_size=image_size, seed=seed, val_fraction=val_fraction, **options)


__all__ = [
    "DATASETS",
    "ClassBalancedBatchSampler",
    "DataSplits",
    "DatasetLayoutError",
    "FileImageDataset",
    "ImageDataset",
    "TensorImageDataset",
    "build_transform",
    "load_splits",
]
