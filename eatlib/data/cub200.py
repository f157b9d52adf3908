"""CUB-200-2011 (Wah et al. 2011): 200 bird species, 11,788 images. DML split: classes 1-100 train,
101-200 test (zero-shot)."""

from __future__ import annotations

import os
from pathlib import Path

from .base import DataSplits
from .layout import DatasetInfo, Item, build_file_splits, malformed

INFO = DatasetInfo(
    name="cub200",
    layout=(
        "  cub200/CUB_200_2011/images.txt               (image_id relative/path.jpg)\n"
        "  cub200/CUB_200_2011/image_class_labels.txt   (image_id class_id, 1..200)\n"
        "  cub200/CUB_200_2011/classes.txt              (class_id name)\n"
        "  cub200/CUB_200_2011/images/001.Black_footed_Albatross/*.jpg ..."
    ),
    url="https://www.vision.caltech.edu/datasets/cub_200_2011/ (archive CUB_200_2011.tgz)",
)
NUM_TRAIN_CLASSES = 100


def _read_pairs(path: Path, expected: str) -> dict[int, str]:
    pairs = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise malformed(path, number, line, expected)
        pairs[int(fields[0])] = fields[1].strip()
    return pairs


def read_cub200(dataset_dir: Path) -> tuple[list[Item], dict[int, str]]:
    """Items of CUB_200_2011 (paths relative to CUB_200_2011/images) and class names by class id."""
    images_txt, labels_txt, classes_txt = INFO.require(
        dataset_dir, "CUB_200_2011/images.txt", "CUB_200_2011/image_class_labels.txt", "CUB_200_2011/classes.txt"
    )
    paths = _read_pairs(images_txt, "image_id relative/path.jpg")
    labels = _read_pairs(labels_txt, "image_id class_id")
    class_names = {cid: name for cid, name in _read_pairs(classes_txt, "class_id name").items()}
    if set(paths) != set(labels):
        raise ValueError(f"{images_txt} and {labels_txt} list different image ids; download the dataset again")
    items = []
    for image_id in sorted(paths):
        class_id = int(labels[image_id])
        items.append(Item(paths[image_id], class_id, "train" if class_id <= NUM_TRAIN_CLASSES else "test"))
    return items, class_names


def load_cub200(
    root: str | os.PathLike = "data", *, image_size: int = 32, seed: int = 0, val_fraction: float = 0.1, **options
) -> DataSplits:
    """CUB-200-2011 from `<root>/cub200/`: train/val from classes 1-100, test = classes 101-200.
    options: protocol ("paper" | "small" | None = by image_size), augment (train augmentation, default True)."""
    dataset_dir = Path(root) / INFO.name
    items, class_names = read_cub200(dataset_dir)
    return build_file_splits(
        INFO, dataset_dir, dataset_dir / "CUB_200_2011" / "images", items, class_names,
        image_size=image_size, seed=seed, val_fraction=val_fraction, **options,
    )  # fmt: skip
