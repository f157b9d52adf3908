"""In-Shop Clothes Retrieval (DeepFashion, Liu et al. 2016): 7,982 items, 52,712 images. Official partition:
train (3,997 items, 25,882 images), query (14,218) and gallery (12,612) over 3,985 unseen items.
Test = query + gallery; `splits.test.roles[i]` says which one image i belongs to."""

from __future__ import annotations

import os
from pathlib import Path

from .base import DataSplits
from .layout import DatasetInfo, Item, build_file_splits, malformed

INFO = DatasetInfo(
    name="inshop",
    layout=(
        "  inshop/list_eval_partition.txt   (count; header; image_name item_id evaluation_status)\n"
        "  inshop/img/WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg ...   (from img.zip)"
    ),
    url=(
        "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html (img.zip, Eval/list_eval_partition.txt)"
    ),
)
ROLES = ("train", "query", "gallery")


def read_inshop(dataset_dir: Path) -> tuple[list[Item], dict[int, str]]:
    """Items of list_eval_partition.txt (paths relative to the dataset folder), class names by class id."""
    (partition,) = INFO.require(dataset_dir, "list_eval_partition.txt")
    lines = partition.read_text(encoding="utf-8").splitlines()
    items, names = [], {}
    for number, line in enumerate(lines[2:], start=3):  # line 1: image count, line 2: column names
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3 or fields[2] not in ROLES or not fields[1].startswith("id_"):
            raise malformed(partition, number, line, "img/.../x.jpg id_00000001 train|query|gallery")
        class_id = int(fields[1][3:])
        names[class_id] = fields[1]
        items.append(Item(fields[0], class_id, fields[2]))
    return items, names


def load_inshop(
    root: str | os.PathLike = "data", *, image_size: int = 32, seed: int = 0, val_fraction: float = 0.1, **options
) -> DataSplits:
    """In-Shop from `<root>/inshop/`: train/val from the official train items, test = query + gallery (its
    `roles` attribute: np.ndarray of "query"/"gallery" per test image).
    options: protocol ("paper" | "small" | None = by image_size), augment (train augmentation, default True)."""
    dataset_dir = Path(root) / INFO.name
    items, class_names = read_inshop(dataset_dir)
    return build_file_splits(
        INFO, dataset_dir, dataset_dir, items, class_names,
        image_size=image_size, seed=seed, val_fraction=val_fraction, test_roles=True, **options,
    )  # fmt: skip
