"""Mixup for metric losses: mixed images, and the loss of their embeddings against mixed targets.

Mixup (Zhang et al., 2018) trains on ``x~ = lam * x_i + (1 - lam) * x_j`` with the target mixed the same way.
For cross-entropy, mixing the two losses ``lam * L(y_i) + (1 - lam) * L(y_j)`` equals mixing the targets, and a
50/50 mix is best placed half-way between its two classes. Proxy-Anchor is different: with ``L(y_i)`` the mixed
sample is also a *negative* of proxy ``y_j``, pushed away from it with its large scale ``alpha``, and ``L(y_j)``
pushes it away from ``y_i``; the sum of both prefers an embedding on one of the two proxies rather than between
them (a test shows it). Weights inside Proxy-Anchor's per-proxy log-sum-exp do not help either: they only shift
the log by ``log w``. So our adaptation (:func:`mixed_loss`) mixes the two losses linearly, as mixup does, but
in both a mixed sample is a negative of every class except its two: it is a positive of ``y_i`` with weight
``lam`` and of ``y_j`` with weight ``1 - lam``. With ``y_i == y_j`` this is exactly Proxy-Anchor (a test checks it
against pytorch-metric-learning). Losses without proxies (triplet, contrastive) mix the two losses plainly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyAnchorLoss
from torch import nn


def weighted_proxy_anchor(
    embeddings: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, proxies: torch.Tensor, *,
    margin: float, alpha: float,
) -> torch.Tensor:
    """Proxy-Anchor with per-pair weights.

    embeddings ``[B, D]``; positives, negatives ``[B, C]``: non-negative weights of sample b as a positive,
    resp. a negative, of proxy c (one-hot and its complement give Proxy-Anchor); proxies ``[C, D]``.
    ``(1/|P+|) sum_{p in P+} log(1 + sum_b pos_bp e^{-alpha (s_bp - margin)})
    + (1/C) sum_p log(1 + sum_b neg_bp e^{alpha (s_bp + margin)})``, with ``s`` the cosine similarity and
    ``P+`` the proxies with a positive in the batch.
    """
    cos = F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).T  # [B, C]
    pos = _log1p_weighted_sum_exp(-alpha * (cos - margin), positives)
    neg = _log1p_weighted_sum_exp(alpha * (cos + margin), negatives)
    with_positives = positives.sum(0) > 0
    return pos[with_positives].sum() / with_positives.sum().clamp(min=1) + neg.sum() / len(proxies)


def _log1p_weighted_sum_exp(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``log(1 + sum_b w_bc exp(logits_bc))`` per column ``c``, stably (zero weights drop out exactly)."""
    logits = logits + torch.log(weights.clamp(min=0))  # log 0 = -inf: that term vanishes
    zero = torch.zeros(1, logits.shape[1], dtype=logits.dtype, device=logits.device)
    return torch.logsumexp(torch.cat([zero, logits]), dim=0)


def mixed_loss(criterion: nn.Module, embeddings: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor,
               lam: float) -> torch.Tensor:
    """The loss of mixed embeddings ``[B, D]`` made of ``lam`` of class ``labels_a`` and ``1 - lam`` of class
    ``labels_b`` (see the module docstring for the Proxy-Anchor adaptation)."""
    if isinstance(criterion, ProxyAnchorLoss):
        one_a = F.one_hot(labels_a, criterion.num_classes).to(embeddings.dtype)
        one_b = F.one_hot(labels_b, criterion.num_classes).to(embeddings.dtype)
        negatives = (1 - one_a - one_b).clamp(min=0)  # a negative of every class but its two
        options = {"margin": criterion.margin, "alpha": criterion.alpha}
        return (lam * weighted_proxy_anchor(embeddings, one_a, negatives, criterion.proxies, **options)
                + (1 - lam) * weighted_proxy_anchor(embeddings, one_b, negatives, criterion.proxies, **options))
    return lam * criterion(embeddings, labels_a) + (1 - lam) * criterion(embeddings, labels_b)


def mixup_loss(model: nn.Module, criterion: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               alpha: float) -> torch.Tensor:
    """Mix the batch with a random permutation of itself (``lam ~ Beta(alpha, alpha)``, one per batch, as in
    mixup's reference code) and return the mixed loss. Draws from the torch RNG (seeded by the trainer)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    order = torch.randperm(len(images), device=images.device)
    mixed = lam * images + (1 - lam) * images[order]
    return mixed_loss(criterion, model(mixed), labels, labels[order], lam)
