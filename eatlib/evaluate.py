"""Embedding a dataset and scoring it: the clean evaluation, and (below) the robustness evaluation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def embed(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 256, device: torch.device | str | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """Embed every image of ``dataset`` in order.

    Returns ``(embeddings [N, D] float32 on CPU, labels [N] int64)``. The model's train/eval mode is left as the
    caller set it: evaluation callers put it in eval mode first.
    """
    device = torch.device(device) if device is not None else model_device(model)
    images = getattr(dataset, "images", None)
    chunks = []
    if isinstance(images, torch.Tensor):
        # In-memory uint8 datasets: slicing beats a DataLoader by an order of magnitude on CPU.
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device, torch.float32).div_(255)
            chunks.append(model(batch).float().cpu())
    else:
        for batch, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            chunks.append(model(batch.to(device)).float().cpu())
    labels = np.asarray(dataset.labels, dtype=np.int64)
    return torch.cat(chunks), labels
