"""A small trained standard model for the strong-protocol and sanity tests (tests/test_apgd.py,
test_square.py, test_strong.py, test_sanity.py; test_robustness.py trains its own with the same helper): cnn4 at
16 px trained with Proxy-Anchor for a few seconds on easy glyphs (clean AMI ~0.77 on 8 images each of 15 unseen
classes; untrained ~0). Trained once per process, so the modules share it. Also the tiny untrained net of the
optimiser tests."""

from __future__ import annotations

import functools

import numpy as np
import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss

from eatlib.data import TensorImageDataset, load_splits
from eatlib.models import build_model

SEED = 0
EASY_GLYPHS = dict(rotation_deg=5.0, shift=0.05, scale_range=(0.8, 0.95), tint=0.1, noise_range=(0.0, 0.02))


def train_proxy_anchor(model, dataset, epochs, seed):
    """Plain Proxy-Anchor training (AdamW, proxies at 100x), enough for a clean NMI well above chance."""
    torch.manual_seed(seed)
    loss = ProxyAnchorLoss(dataset.num_classes, model.embedding_dim, margin=0.1, alpha=32)
    optimizer = torch.optim.AdamW([{"params": model.parameters(), "lr": 3e-3},
                                   {"params": loss.parameters(), "lr": 3e-1}])
    images, labels = dataset.images, torch.as_tensor(dataset.labels)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order) - 63, 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss(model(images[batch].float() / 255), labels[batch]).backward()
            optimizer.step()
    return model.eval()


@functools.cache
def _trained_models(epochs: int = 16):
    splits = load_splits("glyphs", seed=SEED, image_size=16, num_classes=120, images_per_class=16, **EASY_GLYPHS)
    torch.manual_seed(SEED)
    model = train_proxy_anchor(build_model("cnn4", embedding_dim=32, image_size=16), splits.train, epochs, SEED)
    untrained = build_model("cnn4", embedding_dim=32, image_size=16).eval()
    return model, untrained, splits.test


def trained(classes: int = 15, per_class: int = 8):
    """``(model, untrained, test)``: the trained cnn4, an untrained one, and ``per_class`` test images of each
    of the first ``classes`` unseen classes (the model is trained once per process)."""
    model, untrained, test = _trained_models()
    chosen = np.unique(test.labels)[:classes]
    rows = np.concatenate([np.flatnonzero(test.labels == c)[:per_class] for c in chosen])
    subset = TensorImageDataset(test.images[torch.from_numpy(rows)], test.labels[rows],
                                [test.class_names[c] for c in np.unique(test.labels[rows])])
    return model, untrained, subset


class TinyNet(torch.nn.Module):
    """An untrained 8-d embedding net small enough for exact step-count and projection checks."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(8, 8)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.nn.functional.normalize(self.head(torch.relu(self.conv(x - 0.5)).mean((2, 3))), dim=1)


def tiny_set(model: torch.nn.Module):
    """``(model, images [24,3,8,8], labels, clean embeddings)``: 4 classes of 6 random images, with saturated
    pixels so that the [0,1] box matters."""
    torch.manual_seed(0)
    model = model.eval()
    labels = np.repeat(np.arange(4), 6)
    images = torch.rand(len(labels), 3, 8, 8).mul_(1.4).sub_(0.2).clamp_(0, 1)
    with torch.no_grad():
        clean = model(images)
    return model, images, labels, clean
