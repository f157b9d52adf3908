"""Datasets: a registry of loaders that all return `DataSplits` (train / val / test `ImageDataset`s).

- "glyphs": the embedded default (letters rendered from matplotlib's DejaVu fonts; no download).
- "cub200", "cars196", "inshop", "sop": the paper datasets, read from `<root>/<name>/` in their official layouts.

`load_splits(name, root, ...)` is the one entry point; `ClassBalancedBatchSampler` makes P x m batches;
`contact_sheet` draws a grid of examples.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .base import DataSplits, FileImageDataset, ImageDataset, TensorImageDataset
from .cars196 import load_cars196
from .contact_sheet import contact_sheet
from .cub200 import load_cub200
from .glyphs import GlyphOptions, GlyphsFileMismatchError, generate_glyphs, load_glyphs, prepare_glyphs
from .inshop import load_inshop
from .layout import DatasetLayoutError
from .sampler import ClassBalancedBatchSampler
from .sop import load_sop
from .transforms import build_transform

DATASETS: dict[str, Callable[..., DataSplits]] = {
    "glyphs": load_glyphs,
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

    root: the data folder (glyphs: `<root>/glyphs.npz` if prepared, else generated in memory; paper datasets:
    `<root>/<name>/`). seed: glyphs generation and the choice of validation classes. val_fraction: share of the
    training classes moved to `val`. options: dataset-specific (glyphs: GlyphOptions fields; paper datasets:
    protocol, augment); an unknown option is an error listing the allowed ones.
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
    "GlyphOptions",
    "GlyphsFileMismatchError",
    "ImageDataset",
    "TensorImageDataset",
    "build_transform",
    "contact_sheet",
    "generate_glyphs",
    "load_splits",
    "prepare_glyphs",
]
