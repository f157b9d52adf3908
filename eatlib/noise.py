"""Evaluation noise of a clustering score: how much AMI/ARI move when only the evaluation changes.

A score of clustering-based inference depends on more than the model: k-means has a seed, and the test classes are
one draw of the classes the model could meet. :func:`evaluation_noise` measures both on one set of embeddings:

- **k-means seeds**: the same embeddings clustered with ``kmeans_seeds`` seeds (``seed * 1000 + j``);
- **class bootstrap**: ``bootstrap`` replicates, each a draw of the test classes with replacement. Replicate ``b``
  reuses the clustering of k-means seed ``b mod kmeans_seeds`` (no re-clustering: the resampling is of the
  evaluation, not of the model's input), so its spread holds both sources.

The class draws depend only on ``seed`` and the sorted set of labels, never on the embeddings: two models evaluated
on the same images with the same seed get the same draws, replicate by replicate, and the verdict
(:mod:`eatlib.verdict`) takes paired differences of their replicates.

A class drawn twice appears twice: each copy is its own class and, so that copies do not merge into one cluster,
its cluster ids are offset by ``copy * n_clusters``. A perfect clustering therefore stays perfect (AMI = ARI = 1)
in every replicate. The copies also make the level of a replicate drift up from the plain score (a duplicated
class can never be confused with its own copy), so the replicates are for spreads and paired differences, not
for the score itself: that stays the plain k-means score of the attack document.
"""

from __future__ import annotations

import zlib

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

from eatlib.metrics import _as_labels, _as_tensor, kmeans_assign

NOISE_METRICS = ("ami", "ari")
_SCORERS = {"ami": adjusted_mutual_info_score, "ari": adjusted_rand_score}
DECIMALS = 6   # JSON stays compact; far below any difference the verdict can resolve


def _round(values) -> list[float]:
    return [round(float(v), DECIMALS) for v in values]


def label_fingerprint(labels) -> int:
    """CRC32 of the sorted distinct labels: two evaluations can only be paired when these agree."""
    classes = np.unique(np.asarray(labels, dtype=np.int64))
    return zlib.crc32(classes.tobytes())


def class_draws(labels, *, seed: int, replicates: int) -> np.ndarray:
    """Positions ``[replicates, C]`` into the sorted distinct labels, drawn with replacement.

    The generator is seeded from ``seed`` and the label set only, so the draws pair across models."""
    if replicates < 0:
        raise ValueError(f"bootstrap replicates must be >= 0, got {replicates}")
    n_classes = len(np.unique(np.asarray(labels)))
    rng = np.random.default_rng([int(seed), label_fingerprint(labels)])
    return rng.integers(0, n_classes, size=(replicates, n_classes))


def bootstrap_scores(labels: np.ndarray, clusters: np.ndarray, draw: np.ndarray) -> dict[str, float]:
    """AMI and ARI of one class-bootstrap replicate ``draw`` (positions into the sorted distinct labels).

    Each drawn class contributes all its images; the c-th copy of a class gets a fresh class id and its cluster
    ids shifted by ``c * n_clusters``, so duplicates form distinct classes and distinct clusters."""
    classes, inverse = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(classes))]
    n_clusters = int(clusters.max()) + 1
    copies = np.zeros(len(classes), dtype=np.int64)
    new_labels, new_clusters = [], []
    for position, c in enumerate(draw):
        rows = members[c]
        new_labels.append(np.full(len(rows), position, dtype=np.int64))
        new_clusters.append(clusters[rows] + copies[c] * n_clusters)
        copies[c] += 1
    y, k = np.concatenate(new_labels), np.concatenate(new_clusters)
    return {metric: float(score(y, k)) for metric, score in _SCORERS.items()}


def evaluation_noise(embeddings, labels, *, seed: int, kmeans_seeds: int = 5, bootstrap: int = 200) -> dict:
    """k-means-seed and class-bootstrap spread of AMI and ARI on ``embeddings [N, D]`` with ``labels [N]``.

    k-means uses k = number of classes (:func:`eatlib.metrics.kmeans_assign`) and seeds ``seed * 1000 + j`` for
    ``j < kmeans_seeds``. Returns a JSON-ready dict (floats rounded to 6 decimals)::

        {"seed": seed, "labels_crc": int, "images": N, "classes": C,
         "kmeans": {"seeds": [...], "ami": {"values": [...], "mean": f, "sd": f}, "ari": {...}},
         "bootstrap": {"replicates": B, "ami": [B floats], "ari": [B floats]}}

    ``sd`` is the sample standard deviation (0 with one seed). Replicate ``b`` of the bootstrap uses the clustering
    of k-means seed ``b mod kmeans_seeds``; see the module docstring for the pairing and the duplicated classes.
    """
    x = _as_tensor(embeddings)
    y = _as_labels(labels, len(x))
    if kmeans_seeds < 1:
        raise ValueError(f"kmeans_seeds must be >= 1, got {kmeans_seeds}")
    n_classes = len(np.unique(y))
    if n_classes < 2:
        raise ValueError(f"evaluation noise needs at least 2 classes, got {n_classes}")
    seeds = [int(seed) * 1000 + j for j in range(kmeans_seeds)]
    clusterings = [kmeans_assign(x, n_classes, seed=s) for s in seeds]

    kmeans = {"seeds": seeds}
    for metric, score in _SCORERS.items():
        values = np.array([score(y, clusters) for clusters in clusterings])
        sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        kmeans[metric] = {"values": _round(values), "mean": round(float(values.mean()), DECIMALS),
                          "sd": round(sd, DECIMALS)}

    replicates = {metric: [] for metric in NOISE_METRICS}
    for b, draw in enumerate(class_draws(y, seed=seed, replicates=bootstrap)):
        for metric, value in bootstrap_scores(y, clusterings[b % kmeans_seeds], draw).items():
            replicates[metric].append(value)
    return {
        "seed": int(seed),
        "labels_crc": label_fingerprint(y),
        "images": len(y),
        "classes": n_classes,
        "kmeans": kmeans,
        "bootstrap": {"replicates": int(bootstrap), **{m: _round(v) for m, v in replicates.items()}},
    }


__all__ = ["NOISE_METRICS", "bootstrap_scores", "class_draws", "evaluation_noise", "label_fingerprint"]
