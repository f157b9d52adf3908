"""CARS196 (Stanford Cars, Krause et al. 2013): 196 car models, 16,185 images. DML split: classes 1-98 train,
99-196 test (zero-shot; the official train/test flag of each image is ignored, as in DML papers)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io

from .base import DataSplits
from .layout import DatasetInfo, Item, build_file_splits

INFO = DatasetInfo(
    name="cars196",
    layout=(
        "  cars196/cars_annos.mat           (annotations: relative_im_path, class 1..196; class_names)\n"
        "  cars196/car_ims/000001.jpg ...   (from car_ims.tgz)"
    ),
    url="https://ai.stanford.edu/~jkrause/cars/car_dataset.html (car_ims.tgz and cars_annos.mat)",
)
NUM_TRAIN_CLASSES = 98


def read_cars196(dataset_dir: Path) -> tuple[list[Item], dict[int, str]]:
    """Items of cars_annos.mat (paths relative to the dataset folder) and class names by class id (1-based)."""
    (annos_path,) = INFO.require(dataset_dir, "cars_annos.mat")
    try:
        mat = scipy.io.loadmat(annos_path, squeeze_me=True)
        annotations = np.atleast_1d(mat["annotations"])
        paths = [str(p) for p in annotations["relative_im_path"]]
        classes = [int(c) for c in annotations["class"]]
        names = [str(n) for n in np.atleast_1d(mat["class_names"])]
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(
            f"{annos_path} does not hold the expected 'annotations' (relative_im_path, class) and 'class_names' "
            f"({error}); download cars_annos.mat again from {INFO.url}"
        ) from error
    items = [Item(p, c, "train" if c <= NUM_TRAIN_CLASSES else "test") for p, c in zip(paths, classes, strict=True)]
    return items, {i + 1: name for i, name in enumerate(names)}


def load_cars196(
    root: str | os.PathLike = "data", *, image_size: int = 32, seed: int = 0, val_fraction: float = 0.1, **options
) -> DataSplits:
    """CARS196 from `<root>/cars196/`: train/val from classes 1-98, test = classes 99-196.
    options: protocol ("paper" | "small" | None = by image_size), augment (train augmentation, default True)."""
    dataset_dir = Path(root) / INFO.name
    items, class_names = read_cars196(dataset_dir)
    return build_file_splits(
        INFO, dataset_dir, dataset_dir, items, class_names,
        image_size=image_size, seed=seed, val_fraction=val_fraction, **options,
    )  # fmt: skip
