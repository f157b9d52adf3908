"""Shared machinery of the file-based paper datasets: layout checks with helpful errors, and split building.

Each paper dataset module reads its official index files into `Item`s (relative image path, class id, role),
then `build_file_splits` verifies every image exists, carves the validation classes out of the training
classes and wraps each split in a `FileImageDataset` with the right transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import DataSplits, FileImageDataset, carve_val_classes, contiguous_labels
from .transforms import build_transform

FILE_OPTIONS = ("protocol", "augment")  # the extra options every file-based dataset accepts


class DatasetLayoutError(FileNotFoundError):
    """A file of a paper dataset is missing. The message names the file, the expected layout and where to
    download the dataset; `.filename` is the first missing path."""

    def __init__(self, dataset: str, missing: Sequence[Path], dataset_dir: Path, layout: str, url: str):
        shown = ", ".join(str(p) for p in missing[:3])
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        message = (
            f"{dataset}: missing {shown}{more}.\n"
            f"Expected layout under {dataset_dir}:\n{layout}\n"
            f"Download the dataset from {url}, unpack it as shown above (then `dvc add data` to track it)."
        )
        super().__init__(message)
        self.filename = str(missing[0])
        self.missing = [Path(p) for p in missing]

    def __str__(self) -> str:  # OSError would otherwise format errno-style
        return self.args[0]


@dataclass(frozen=True)
class DatasetInfo:
    """What a loader needs to explain a layout: its registry name, layout sketch and download page."""

    name: str
    layout: str
    url: str

    def require(self, dataset_dir: Path, *relative: str) -> list[Path]:
        """The absolute paths of the given index files; raises DatasetLayoutError if any is missing."""
        paths = [dataset_dir / r for r in relative]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetLayoutError(self.name, missing, dataset_dir, self.layout, self.url)
        return paths


@dataclass(frozen=True)
class Item:
    """One image of an index file: `path` relative to the image base folder, `class_id` as in the index,
    `role`: "train" or "test" (In-Shop also "query"/"gallery", both test)."""

    path: str
    class_id: int
    role: str


def malformed(index_file: Path, line_number: int, line: str, expected: str) -> ValueError:
    return ValueError(
        f"{index_file}, line {line_number}: expected {expected!r}, got {line.strip()!r}; "
        f"the file looks damaged, download the dataset again"
    )


def build_file_splits(
    info: DatasetInfo,
    dataset_dir: Path,
    image_base: Path,
    items: Sequence[Item],
    class_names: dict[int, str],
    *,
    image_size: int,
    seed: int,
    val_fraction: float,
    test_roles: bool = False,
    **options,
) -> DataSplits:
    """Verify the images and build DataSplits. options: `protocol` ("paper"/"small"/None), `augment` (bool).

    test_roles: give the test split a `roles` array (each test image's Item.role, e.g. "query"/"gallery").
    """
    unknown = sorted(set(options) - set(FILE_OPTIONS))
    if unknown:
        raise TypeError(f"unknown {info.name} option(s) {unknown}; allowed: {list(FILE_OPTIONS)}")
    protocol, augment = options.get("protocol"), bool(options.get("augment", True))
    if not items:
        raise ValueError(f"{info.name}: the index files under {dataset_dir} list no images")
    missing = [image_base / item.path for item in items if not (image_base / item.path).is_file()]
    if missing:
        raise DatasetLayoutError(info.name, missing, dataset_dir, info.layout, info.url)

    class_ids = np.array([item.class_id for item in items], dtype=np.int64)
    is_test = np.array([item.role != "train" for item in items])
    train_classes = np.unique(class_ids[~is_test])
    shared = np.intersect1d(train_classes, class_ids[is_test])
    if len(shared):
        raise ValueError(f"{info.name}: classes {shared[:5].tolist()} appear in both train and test index lists")
    val_classes = carve_val_classes(train_classes, val_fraction, seed)
    in_val = np.isin(class_ids, val_classes)

    def split(rows: np.ndarray, train: bool, with_roles: bool = False) -> FileImageDataset:
        labels, present = contiguous_labels(class_ids[rows])
        return FileImageDataset(
            [image_base / items[r].path for r in rows],
            labels,
            [class_names.get(int(c), str(int(c))) for c in present],
            build_transform(image_size, train=train, protocol=protocol, augment=augment),
            roles=[items[r].role for r in rows] if with_roles else None,
        )

    return DataSplits(
        train=split(np.flatnonzero(~is_test & ~in_val), train=True),
        val=split(np.flatnonzero(in_val), train=False),
        test=split(np.flatnonzero(is_test), train=False, with_roles=test_roles),
    )
