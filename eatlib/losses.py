"""Metric-learning losses, all from pytorch-metric-learning: ``loss(embeddings, labels) -> scalar``.

Proxy-based losses own parameters (the proxies); ``proxy_parameters`` tells the trainer which ones, so they can
get their own learning rate (Proxy-Anchor's proxies train at 100x the backbone's rate).
"""

from __future__ import annotations

from functools import partial

from pytorch_metric_learning import distances, losses, miners
from torch import nn

from eatlib import params


def proxy_anchor(num_classes: int, embedding_dim: int, *, margin: float = 0.1, alpha: float = 32.0) -> nn.Module:
    return losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=margin, alpha=alpha)


def triplet(num_classes: int, embedding_dim: int, *, margin: float = 0.2) -> nn.Module:
    # Semi-hard-ish mining keeps triplet training from stalling on easy triplets.
    return _MinedLoss(losses.TripletMarginLoss(margin=margin), miners.TripletMarginMiner(margin=margin))


def contrastive(
    num_classes: int, embedding_dim: int, *, pos_margin: float = 0.0, neg_margin: float = 0.5
) -> nn.Module:
    return losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, distance=distances.LpDistance())


class _MinedLoss(nn.Module):
    """A pytorch-metric-learning loss fed by a miner, behind the plain ``loss(embeddings, labels)`` call."""

    def __init__(self, loss: nn.Module, miner: nn.Module):
        super().__init__()
        self.loss, self.miner = loss, miner

    def forward(self, embeddings, labels):
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


LOSSES = {"proxy_anchor": proxy_anchor, "triplet": triplet, "contrastive": contrastive}


def _check_options(build, options, key: str) -> None:
    """``train.loss.options``: the loss's own keyword options (the sizes come from the data and the model)."""
    params.check_keywords(build, options, key, skip=("num_classes", "embedding_dim"))


for _name, _build in LOSSES.items():
    params.LOSSES.register(_name, partial(_check_options, _build))


def build_loss(name: str, num_classes: int, embedding_dim: int, **options) -> nn.Module:
    """Build a loss by name; ``options`` are the loss's own hyper-parameters (margin, alpha, ...)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name](num_classes, embedding_dim, **options)


def proxy_parameters(loss: nn.Module) -> list[nn.Parameter]:
    """The loss's learnable proxies (empty for pair- and triplet-based losses)."""
    return [p for p in loss.parameters() if p.requires_grad]
