"""Datasets: a registry of loaders that all return `DataSplits` (train / val / test `ImageDataset`s).

- "glyphs": the embedded default (letters rendered from matplotlib's DejaVu fonts; no download).
- "cub200", "cars196", "inshop", "sop": the paper datasets, read from `<root>/<name>/` in their official layouts.

`load_splits(name, root, ...)` is the one entry point; `ClassBalancedBatchSampler` makes P x m batches;
`contact_sheet` draws a grid of examples.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable

from eatlib import params

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


def _check_glyph_options(options, key: str) -> None:
    """``data.options`` of glyphs: GlyphOptions fields, less the two that ``data`` and ``seed`` set."""
    params.check_keywords(GlyphOptions, options, key, skip=("image_size", "seed"))
    try:
        GlyphOptions.from_kwargs(**options)
    except (TypeError, ValueError) as error:  # its range checks name the option
        raise params.ConfigError(f"{key}: {error}") from None


def _check_file_options(options, key: str) -> None:
    """``data.options`` of a paper dataset: its protocol and whether to augment training images."""
    try:
        params.check_keywords(_file_options, options, key)
    except params.ConfigError as error:
        glyph_keys = sorted(set(options) & {f.name for f in dataclasses.fields(GlyphOptions)})
        if not glyph_keys:
            raise
        raise params.ConfigError(f"{error}. {glyph_keys} are options of the glyphs generator: with a paper "
                                 "dataset set data.options to {} (make paper does)") from None


def _file_options(*, protocol: typing.Literal["paper", "small"] | None = None, augment: bool = True) -> None:
    """The options every paper dataset's loader takes (eatlib.data.layout.build_file_splits)."""


for _name in DATASETS:
    params.DATASETS.register(_name, _check_glyph_options if _name == "glyphs" else _check_file_options)


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
