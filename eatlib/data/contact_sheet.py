"""Contact sheet: a grid of example images, one row per class, to see what a dataset looks like."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .base import ImageDataset  # noqa: E402


def contact_sheet(
    dataset: ImageDataset,
    path: str | os.PathLike,
    *,
    classes: int = 16,
    per_class: int = 8,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Save a PNG grid: `classes` rows (classes picked at random, seeded) x `per_class` images of each.

    Rows are labelled with the class name. Classes with fewer images leave blank cells. Returns the path.
    """
    if classes < 1 or per_class < 1:
        raise ValueError(f"classes and per_class must be >= 1, got {classes} and {per_class}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: nothing to show")
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(dataset.num_classes, size=min(classes, dataset.num_classes), replace=False))

    cell = 0.75  # inches per image
    size = (per_class * cell + 1.2, len(shown) * cell + (0.75 if title else 0.4))
    fig, axes = plt.subplots(len(shown), per_class, figsize=size, squeeze=False)
    for row, label in enumerate(shown):
        members = np.flatnonzero(dataset.labels == label)[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(members):
                image, _ = dataset[int(members[col])]
                ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        axes[row, 0].set_ylabel(
            dataset.class_names[label], rotation=0, ha="right", va="center", fontsize=8, fontfamily="DejaVu Sans"
        )
    if title:
        fig.suptitle(title, fontsize=10)
    # Leave 0.35 inch above the grid for the title, so it never covers the first row.
    fig.tight_layout(pad=0.3, h_pad=0.1, w_pad=0.1, rect=(0, 0, 1, 1 - 0.35 / size[1] if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
