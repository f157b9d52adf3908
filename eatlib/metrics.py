"""Embedding quality: clustering metrics (one seeded k-means) and retrieval metrics (cosine neighbours).

Clustering-based inference is the paper's setting: embed a set, run k-means with k = number of classes, read the
clusters as the answer. NMI has a high chance floor with ~100 clusters, so the chance-corrected AMI and ARI are
reported beside it. Retrieval metrics (Recall@K, MAP@R) are the usual DML numbers.

Every function takes ``embeddings`` as a float tensor or array ``[N, D]`` and ``labels`` as int ``[N]``, and
returns a dict of Python floats. Rows are L2-normalised first (a no-op for model outputs, which already are), so
k-means and neighbours both work on the unit sphere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix, pair_confusion_matrix

# k-means restarts: fixed (never sklearn's version-dependent "auto") so a seed gives the same clustering.
KMEANS_N_INIT = 3
# Query rows per similarity block in retrieval: bounds memory at chunk x N floats.
NEIGHBOUR_CHUNK = 1024


def _as_tensor(embeddings, name: str = "embeddings") -> torch.Tensor:
    x = torch.as_tensor(embeddings).detach().cpu()
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf; check the model output before evaluating")
    return F.normalize(x.float(), dim=1)


def _as_labels(labels, n: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must be 1-D with one entry per embedding ({n}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def kmeans_assign(embeddings, n_clusters: int, *, seed: int = 0) -> np.ndarray:
    """Cluster L2-normalised ``embeddings [N, D]`` into ``n_clusters`` with seeded sklearn k-means -> ``[N]`` ids."""
    x = _as_tensor(embeddings).numpy()
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters must be between 1 and the number of embeddings ({len(x)}), got {n_clusters}")
    kmeans = KMeans(n_clusters=n_clusters, n_init=KMEANS_N_INIT, random_state=seed)
    return kmeans.fit_predict(x.astype(np.float64))


def pairwise_f1(labels, clusters) -> float:
    """Pair-counting F1 as in DML papers (Song et al. 2017), from the contingency table.

    Over all pairs of samples: precision = same-cluster pairs that share a class / same-cluster pairs;
    recall = same-class pairs put in the same cluster / same-class pairs; F1 is their harmonic mean
    (0 when there are no same-cluster or no same-class pairs).
    """
    # sklearn counts ordered pairs: [[both apart, apart in class & together in cluster], [split, both together]]
    (_, together_wrong), (split, together_right) = pair_confusion_matrix(labels, clusters).tolist()
    same_cluster = together_right + together_wrong
    same_class = together_right + split
    if together_right == 0 or same_cluster == 0 or same_class == 0:
        return 0.0
    precision = together_right / same_cluster
    recall = together_right / same_class
    return 2 * precision * recall / (precision + recall)


def purity(labels, clusters) -> float:
    """Fraction of samples whose cluster's majority class is their own class."""
    table = contingency_matrix(labels, clusters, sparse=True)
    return float(table.max(axis=0).sum() / table.sum())


def scores_from_clusters(labels, clusters) -> dict[str, float]:
    """NMI (arithmetic normalisation, sklearn's default), AMI, ARI, pairwise F1 and purity of one clustering."""
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ami": float(adjusted_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "f1": float(pairwise_f1(labels, clusters)),
        "purity": float(purity(labels, clusters)),
    }


def cluster_metrics(embeddings, labels, *, n_clusters: int | None = None, seed: int = 0) -> dict[str, float]:
    """Clustering-based inference scores of ``embeddings [N, D]`` against ``labels [N]``.

    One seeded k-means (``KMEANS_N_INIT`` restarts, ``random_state=seed``) with ``n_clusters`` clusters (default:
    the number of distinct labels) is shared by every metric. Returns keys nmi, ami, ari, f1, purity.
    """
    x = _as_tensor(embeddings)
    y = _as_labels(labels, len(x))
    k = int(len(np.unique(y))) if n_clusters is None else int(n_clusters)
    clusters = kmeans_assign(x, k, seed=seed)
    return scores_from_clusters(y, clusters)


def _neighbour_labels(queries: torch.Tensor, reference: torch.Tensor, ref_labels: torch.Tensor, k: int):
    """Labels ``[Q, k]`` of each query's k most cosine-similar references, reference i excluded for query i."""
    out = []
    for start in range(0, len(queries), NEIGHBOUR_CHUNK):
        sims = queries[start : start + NEIGHBOUR_CHUNK] @ reference.T
        rows = torch.arange(len(sims))
        sims[rows, rows + start] = -float("inf")  # query i never retrieves item i (itself or its clean copy)
        out.append(ref_labels[sims.topk(k, dim=1).indices])
    return torch.cat(out)


def retrieval_metrics(
    embeddings,
    labels,
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    queries=None,
    query_labels=None,
) -> dict[str, float]:
    """Recall@K and MAP@R from cosine neighbours, leave-one-out over ``embeddings [N, D]``.

    Every item is a query against all the others. With ``queries [N, D]`` given, ``queries[i]`` is another
    (e.g. adversarial) version of ``embeddings[i]``: it is searched against the clean set with its own clean copy
    ``embeddings[i]`` left out; ``query_labels`` default to ``labels``.
    Recall@K: fraction of queries with a same-class item among their K nearest. MAP@R (Musgrave et al. 2020):
    with R = number of same-class references, mean over queries of (1/R) sum_{i<=R} precision@i * relevant(i).
    Queries with no same-class reference cannot be answered and are left out. Returns "recall@K" per K and "map@r".
    """
    reference = _as_tensor(embeddings)
    ref_labels_np = _as_labels(labels, len(reference))
    if queries is None:
        if query_labels is not None:
            raise ValueError("query_labels was given without queries; pass both, or neither")
        query = reference
        query_labels_np = ref_labels_np
    else:
        query = _as_tensor(queries, "queries")
        if query.shape != reference.shape:
            raise ValueError(
                f"queries must pair one-to-one with embeddings (queries[i] is a version of embeddings[i]): "
                f"got shapes {tuple(query.shape)} and {tuple(reference.shape)}"
            )
        query_labels_np = (
            ref_labels_np if query_labels is None else _as_labels(query_labels, len(query), "query_labels")
        )
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")

    ref_labels = torch.from_numpy(ref_labels_np)
    q_labels = torch.from_numpy(query_labels_np)
    # R_i = references sharing query i's label, minus reference i when it shares it (it is excluded).
    values, counts = np.unique(ref_labels_np, return_counts=True)
    count_of = dict(zip(values.tolist(), counts.tolist(), strict=True))
    relevant = torch.tensor([count_of.get(c, 0) for c in query_labels_np.tolist()], dtype=torch.int64)
    relevant -= torch.from_numpy(ref_labels_np == query_labels_np).long()
    answerable = relevant > 0
    if not answerable.any():
        raise ValueError("no query has a same-class reference; retrieval metrics are undefined")
    n_ref = len(reference) - 1
    if ks[-1] > n_ref:
        raise ValueError(f"largest K ({ks[-1]}) exceeds the number of references per query ({n_ref})")

    k_needed = min(max(ks[-1], int(relevant.max())), n_ref)
    hits = _neighbour_labels(query, reference, ref_labels, k_needed) == q_labels[:, None]
    hits, relevant = hits[answerable], relevant[answerable]

    result = {f"recall@{k}": float(hits[:, :k].any(dim=1).float().mean()) for k in ks}
    ranks = torch.arange(1, k_needed + 1)
    within_r = ranks[None, :] <= relevant[:, None]
    hits_r = hits & within_r
    precision_at_i = hits_r.cumsum(dim=1) / ranks
    average_precision = (precision_at_i * hits_r).sum(dim=1) / relevant
    result["map@r"] = float(average_precision.mean())
    return result


def embedding_metrics(embeddings, labels, *, seed: int = 0, ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """``cluster_metrics`` (k = number of classes) and ``retrieval_metrics`` merged into one dict."""
    return {**cluster_metrics(embeddings, labels, seed=seed), **retrieval_metrics(embeddings, labels, ks=ks)}
