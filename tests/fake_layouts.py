"""Tiny fake copies of the paper datasets' official layouts (a few generated JPEGs, a few classes).

Each `make_fake_<name>(root)` writes `<root>/<name>/` in the layout `eatlib.data.load_splits(name, root)` reads
and returns a `FakeLayout` with what a test needs to check the result or to break the layout. Used by
tests/test_data_paper.py and by the pipeline smoke test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


@dataclass
class FakeLayout:
    """dataset_dir: `<root>/<name>`; index_files: the index files written; images: every image written;
    train_classes / test_classes: number of classes in the official train / test part; images_per_class;
    test_roles: role per test image in load order (In-Shop: "query"/"gallery"), else None."""

    dataset_dir: Path
    index_files: list[Path]
    images: list[Path]
    train_classes: int
    test_classes: int
    images_per_class: int
    test_roles: list[str] | None = None

    @property
    def train_images(self) -> int:
        return self.train_classes * self.images_per_class

    @property
    def test_images(self) -> int:
        return self.test_classes * self.images_per_class


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    """A small JPEG of random colour blocks (size = width, height), deterministic from seed."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((size[1] // 3 + 1, size[0] // 4 + 1, 1), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[: size[1], : size[0]]).save(path, format="JPEG")
    return path


def make_fake_cub200(root: Path, train_classes: int = 4, test_classes: int = 3, images_per_class: int = 3):
    """CUB_200_2011 with classes 1..train_classes (train) and 101..100+test_classes (test)."""
    base = Path(root) / "cub200" / "CUB_200_2011"
    class_ids = list(range(1, train_classes + 1)) + list(range(101, 101 + test_classes))
    images_txt, labels_txt, classes_txt, images = [], [], [], []
    image_id = 0
    for class_id in class_ids:
        folder = f"{class_id:03d}.Bird_{class_id}"
        classes_txt.append(f"{class_id} {folder}")
        for k in range(images_per_class):
            image_id += 1
            relative = f"{folder}/Bird_{class_id}_{k:04d}.jpg"
            images.append(write_jpeg(base / "images" / relative, image_id))
            images_txt.append(f"{image_id} {relative}")
            labels_txt.append(f"{image_id} {class_id}")
    index_files = []
    for name, lines in (("images.txt", images_txt), ("image_class_labels.txt", labels_txt),
                        ("classes.txt", classes_txt)):  # fmt: skip
        (base / name).write_text("\n".join(lines) + "\n")
        index_files.append(base / name)
    return FakeLayout(base.parent, index_files, images, train_classes, test_classes, images_per_class)


def make_fake_cars196(root: Path, train_classes: int = 4, test_classes: int = 3, images_per_class: int = 3):
    """cars_annos.mat + car_ims/ with classes 1..train_classes and 99..98+test_classes."""
    dataset_dir = Path(root) / "cars196"
    class_ids = list(range(1, train_classes + 1)) + list(range(99, 99 + test_classes))
    count = len(class_ids) * images_per_class
    fields = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
    annotations = np.zeros((1, count), dtype=[(field, "O") for field in fields])
    images = []
    for n in range(count):
        class_id = class_ids[n // images_per_class]
        relative = f"car_ims/{n + 1:06d}.jpg"
        images.append(write_jpeg(dataset_dir / relative, 1000 + n))
        annotations[0, n] = (relative, 1, 1, 39, 29, np.uint8(class_id), np.uint8(n % 2))
    class_names = np.empty((1, 196), dtype=object)
    for i in range(196):
        class_names[0, i] = f"Make Model {i + 1} 2012"
    mat = dataset_dir / "cars_annos.mat"
    scipy.io.savemat(mat, {"annotations": annotations, "class_names": class_names})
    return FakeLayout(dataset_dir, [mat], images, train_classes, test_classes, images_per_class)


def make_fake_inshop(root: Path, train_classes: int = 4, test_classes: int = 3, images_per_class: int = 3):
    """list_eval_partition.txt + img/: test items have their first image as query, the rest in the gallery."""
    dataset_dir = Path(root) / "inshop"
    lines, images, roles = [], [], []
    for item in range(1, train_classes + test_classes + 1):
        is_train = item <= train_classes
        for k in range(images_per_class):
            relative = f"img/WOMEN/Dresses/id_{item:08d}/{k + 1:02d}_{k + 1}_front.jpg"
            images.append(write_jpeg(dataset_dir / relative, 2000 + 10 * item + k))
            role = "train" if is_train else ("query" if k == 0 else "gallery")
            lines.append(f"{relative} id_{item:08d} {role}")
            if not is_train:
                roles.append(role)
    partition = dataset_dir / "list_eval_partition.txt"
    partition.write_text(f"{len(lines)}\nimage_name item_id evaluation_status\n" + "\n".join(lines) + "\n")
    return FakeLayout(dataset_dir, [partition], images, train_classes, test_classes, images_per_class, roles)


def make_fake_sop(root: Path, train_classes: int = 4, test_classes: int = 3, images_per_class: int = 3):
    """Stanford_Online_Products/ with Ebay_train.txt (classes 1..) and Ebay_test.txt (the next classes)."""
    base = Path(root) / "sop" / "Stanford_Online_Products"
    images, index_files = [], []
    image_id, class_id = 0, 0
    for name, num_classes in (("Ebay_train.txt", train_classes), ("Ebay_test.txt", test_classes)):
        lines = ["image_id class_id super_class_id path"]
        for _ in range(num_classes):
            class_id += 1
            for k in range(images_per_class):
                image_id += 1
                relative = f"bicycle_final/{100000 + class_id}_{k}.JPG"
                images.append(write_jpeg(base / relative, 3000 + image_id))
                lines.append(f"{image_id} {class_id} 1 {relative}")
        (base / name).write_text("\n".join(lines) + "\n")
        index_files.append(base / name)
    return FakeLayout(base.parent, index_files, images, train_classes, test_classes, images_per_class)


FAKE_LAYOUTS: dict[str, Callable[..., FakeLayout]] = {
    "cub200": make_fake_cub200,
    "cars196": make_fake_cars196,
    "inshop": make_fake_inshop,
    "sop": make_fake_sop,
}
