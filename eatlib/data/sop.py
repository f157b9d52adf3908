"""Stanford Online Products (Oh Song et al. 2016): 22,634 products, 120,053 images. Official split:
Ebay_train.txt (11,318 classes, 59,551 images) and Ebay_test.txt (11,316 classes, 60,502 images)."""

from __future__ import annotations

import os
from pathlib import Path

from .base import DataSplits
from .layout import DatasetInfo, Item, build_file_splits, malformed

INFO = DatasetInfo(
    name="sop",
    layout=(
        "  sop/Stanford_Online_Products/Ebay_train.txt   (header; image_id class_id super_class_id path)\n"
        "  sop/Stanford_Online_Products/Ebay_test.txt\n"
        "  sop/Stanford_Online_Products/bicycle_final/111085122871_0.JPG ..."
    ),
    url="https://cvgl.stanford.edu/projects/lifted_struct/ (Stanford_Online_Products.zip)",
)


def _read_ebay(path: Path, role: str) -> list[Item]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):  # skip header
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4 or not fields[1].isdigit():
            raise malformed(path, number, line, "image_id class_id super_class_id path")
        items.append(Item(fields[3], int(fields[1]), role))
    return items


def read_sop(dataset_dir: Path) -> tuple[list[Item], dict[int, str]]:
    """Items of Ebay_train.txt / Ebay_test.txt (paths relative to Stanford_Online_Products/)."""
    train_txt, test_txt = INFO.require(
        dataset_dir, "Stanford_Online_Products/Ebay_train.txt", "Stanford_Online_Products/Ebay_test.txt"
    )
    items = _read_ebay(train_txt, "train") + _read_ebay(test_txt, "test")
    # A product's name: its folder (super class) and id, e.g. "bicycle_final/1".
    names = {item.class_id: f"{item.path.split('/')[0]}/{item.class_id}" for item in items}
    return items, names


def load_sop(
    root: str | os.PathLike = "data", *, image_size: int = 32, seed: int = 0, val_fraction: float = 0.1, **options
) -> DataSplits:
    """Stanford Online Products from `<root>/sop/`: train/val from Ebay_train.txt, test = Ebay_test.txt.
    options: protocol ("paper" | "small" | None = by image_size), augment (train augmentation, default True)."""
    dataset_dir = Path(root) / INFO.name
    items, class_names = read_sop(dataset_dir)
    return build_file_splits(
        INFO, dataset_dir, dataset_dir / "Stanford_Online_Products", items, class_names,
        image_size=image_size, seed=seed, val_fraction=val_fraction, **options,
    )  # fmt: skip
