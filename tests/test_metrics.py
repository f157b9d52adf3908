"""eatlib.metrics: cross-checked against pytorch-metric-learning and against NMI, ARI, F1 and purity computed by
hand from the contingency table."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from eatlib import metrics
from eatlib.metrics import (
    cluster_metrics,
    embedding_metrics,
    kmeans_assign,
    pairwise_f1,
    purity,
    retrieval_metrics,
)


def random_embeddings(n_classes=12, per_class=9, dim=16, spread=1.0, seed=0):
    """Noisy class centres: partly clustered, so every metric lands strictly between 0 and 1."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=gen)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    return F.normalize(x, dim=1), labels.numpy()


def perfect_embeddings(n_classes=5, per_class=4, dim=8, seed=0):
    """Each class on its own orthogonal axis with tiny jitter: trivially separable."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = F.one_hot(labels, dim).float() + 0.01 * torch.rand(len(labels), dim, generator=gen)
    return F.normalize(x, dim=1), labels.numpy()


def on_circle(degrees):
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()


class RecallAtK(AccuracyCalculator):
    """pytorch-metric-learning's documented way to add a metric from its k-NN labels."""

    def calculate_recall_at_2(self, knn_labels, query_labels, **kwargs):
        return self._recall(knn_labels, query_labels, 2, kwargs["not_lone_query_mask"])

    def calculate_recall_at_4(self, knn_labels, query_labels, **kwargs):
        return self._recall(knn_labels, query_labels, 4, kwargs["not_lone_query_mask"])

    @staticmethod
    def _recall(knn_labels, query_labels, k, mask):
        hit = (knn_labels[:, :k] == query_labels[:, None]).any(dim=1)
        return hit[mask].float().mean().item()

    def requires_knn(self):
        return super().requires_knn() + ["recall_at_2", "recall_at_4"]


def pml_reference(x, y):
    # faiss is not a dependency: pml's exact k-NN on cosine similarity instead.
    calc = RecallAtK(
        include=("precision_at_1", "mean_average_precision_at_r", "recall_at_2", "recall_at_4"),
        knn_func=CustomKNN(CosineSimilarity()),
    )
    got = calc.get_accuracy(x, torch.as_tensor(y))
    return {
        "recall@1": got["precision_at_1"],
        "recall@2": got["recall_at_2"],
        "recall@4": got["recall_at_4"],
        "map@r": got["mean_average_precision_at_r"],
    }


def brute_force_retrieval(reference, labels, queries, query_labels, ks):
    """Reference implementation: one query at a time, explicit sort, clean copy i dropped for query i."""
    recalls = {k: [] for k in ks}
    aps = []
    for i in range(len(queries)):
        sims = (reference @ queries[i]).numpy().astype(np.float64)
        others = np.array([j for j in range(len(reference)) if j != i])
        order = others[np.argsort(-sims[others], kind="stable")]
        rel = labels[order] == query_labels[i]
        r = int(rel.sum())
        if r == 0:
            continue
        for k in ks:
            recalls[k].append(rel[:k].any())
        top = rel[:r]
        aps.append(sum(top[:j + 1].sum() / (j + 1) for j in range(r) if top[j]) / r)
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
    out["map@r"] = float(np.mean(aps))
    return out


# --- clustering -----------------------------------------------------------------------------------------------

def contingency(labels, clusters) -> np.ndarray:
    """``table[i, j]`` = number of samples of class i (in sorted order) put in cluster j."""
    classes, y = np.unique(labels, return_inverse=True)
    ids, c = np.unique(clusters, return_inverse=True)
    table = np.zeros((len(classes), len(ids)), dtype=np.int64)
    np.add.at(table, (y, c), 1)
    return table


def nmi_by_hand(table: np.ndarray) -> float:
    """I(Y; C) / ((H(Y) + H(C)) / 2), with natural logs, from the counts alone."""
    p = table / table.sum()
    py, pc = p.sum(1), p.sum(0)
    nz = p > 0
    mutual = float((p[nz] * np.log(p[nz] / np.outer(py, pc)[nz])).sum())
    entropy = lambda q: float(-(q[q > 0] * np.log(q[q > 0])).sum())
    mean_entropy = (entropy(py) + entropy(pc)) / 2
    return mutual / mean_entropy if mean_entropy > 0 else 1.0


def ari_by_hand(table: np.ndarray) -> float:
    """Hubert and Arabie: (sum_ij C(n_ij,2) - E) / (mean of the row and column pair sums - E)."""
    pairs = lambda n: n * (n - 1) / 2
    together, rows, cols = pairs(table).sum(), pairs(table.sum(1)).sum(), pairs(table.sum(0)).sum()
    expected = rows * cols / pairs(table.sum())
    return float((together - expected) / ((rows + cols) / 2 - expected))


def test_hand_formulas_on_a_hand_counted_table():
    # classes {0,1,2} {3,4,5}; clusters {0,1} {2,3} {4,5}: table [[2,1,0],[0,1,2]].
    table = contingency([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2])
    assert table.tolist() == [[2, 1, 0], [0, 1, 2]]
    # pairs: together 1+1 = 2, rows 3+3 = 6, columns 1+1+1 = 3, all 15 -> E = 18/15 = 1.2
    assert ari_by_hand(table) == pytest.approx((2 - 1.2) / (4.5 - 1.2))
    # H(Y) = ln 2, H(C) = ln 3, I = 4 * (1/3) ln 2 = ... : 2 cells of 1/3 with ratio 2, 2 cells of 1/6 with ratio 1
    mutual = 2 * (1 / 3) * math.log(2)
    assert nmi_by_hand(table) == pytest.approx(mutual / ((math.log(2) + math.log(3)) / 2))


def test_cluster_metrics_match_hand_computed_nmi_and_ari_of_one_shared_kmeans():
    x, y = random_embeddings()
    got = cluster_metrics(x, y, seed=3)
    table = contingency(y, kmeans_assign(x, 12, seed=3))  # the same seeded k-means the scores must share
    assert got["nmi"] == pytest.approx(nmi_by_hand(table), abs=1e-12)
    assert got["ari"] == pytest.approx(ari_by_hand(table), abs=1e-12)
    assert 0.05 < got["ari"] < 0.95  # a non-trivial case: the comparison above means something
    # AMI: chance-corrected, so below NMI on this partly clustered set, and near 0 for unrelated labels.
    assert 0 < got["ami"] < got["nmi"]
    shuffled = np.random.default_rng(0).permutation(y)
    assert abs(cluster_metrics(x, shuffled, seed=3)["ami"]) < 0.05
    assert set(got) == {"nmi", "ami", "ari", "f1", "purity"}
    assert all(type(v) is float for v in got.values())


def ambiguous_embeddings(n=120, dim=8, seed=0):
    """Points spread uniformly over the sphere: no cluster structure, many equally good k-means optima."""
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, dim, generator=gen), dim=1)
    return x, np.arange(n) % 12


def same_partition(a, b) -> bool:
    """True when two clusterings group the samples identically (whatever the cluster ids)."""
    table = contingency(a, b)
    nonzero = table > 0
    return table.shape[0] == table.shape[1] and bool((nonzero.sum(0) == 1).all() and (nonzero.sum(1) == 1).all())


def test_cluster_metrics_are_deterministic_for_a_seed_and_the_seed_matters():
    x, y = ambiguous_embeddings()
    assert cluster_metrics(x, y, seed=7) == cluster_metrics(x, y, seed=7)
    assert np.array_equal(kmeans_assign(x, 12, seed=7), kmeans_assign(x, 12, seed=7))
    # On a set without structure the seed picks the optimum: other seeds give other partitions and scores.
    reference = kmeans_assign(x, 12, seed=7)
    others = [kmeans_assign(x, 12, seed=s) for s in (0, 1, 2)]
    assert not any(same_partition(reference, other) for other in others)
    assert len({cluster_metrics(x, y, seed=s)["nmi"] for s in (0, 1, 2, 7)}) > 1


def test_perfectly_clustered_embeddings_score_one_everywhere():
    x, y = perfect_embeddings()
    got = embedding_metrics(x, y, ks=(1, 2))
    assert got == pytest.approx({k: 1.0 for k in got})
    assert set(got) == {"nmi", "ami", "ari", "f1", "purity", "recall@1", "recall@2", "map@r"}


def test_pairwise_f1_and_purity_on_hand_counted_cases():
    # clusters {0,1} {2,3,4}; classes {0,1,2} {3,4}: same-cluster pairs 1+3=4, same-class pairs 3+1=4,
    # pairs right on both counts: (0,1) and (3,4) -> precision 2/4, recall 2/4, F1 1/2.
    assert pairwise_f1([0, 0, 0, 1, 1], [0, 0, 1, 1, 1]) == pytest.approx(0.5)
    assert purity([0, 0, 0, 1, 1], [0, 0, 1, 1, 1]) == pytest.approx(4 / 5)
    # one cluster for everything: precision 7/15, recall 1 -> F1 = 2 * 7/15 / (22/15) = 7/11.
    assert pairwise_f1([0, 0, 0, 0, 1, 1], [5] * 6) == pytest.approx(7 / 11)
    assert purity([0, 0, 0, 0, 1, 1], [5] * 6) == pytest.approx(4 / 6)
    # singletons: no same-cluster pair at all -> F1 0 (not a division by zero)
    assert pairwise_f1([0, 0, 1, 1], [0, 1, 2, 3]) == 0.0
    # F1 does not depend on how cluster ids are named
    assert pairwise_f1([0, 0, 1, 1, 2], [9, 9, 4, 4, 4]) == pairwise_f1([0, 0, 1, 1, 2], [1, 1, 0, 0, 0])


def test_pairwise_f1_matches_an_explicit_pair_loop():
    rng = np.random.default_rng(0)
    y, c = rng.integers(0, 5, 60), rng.integers(0, 7, 60)
    i, j = np.triu_indices(60, k=1)
    same_class, same_cluster = y[i] == y[j], c[i] == c[j]
    p = (same_class & same_cluster).sum() / same_cluster.sum()
    r = (same_class & same_cluster).sum() / same_class.sum()
    assert pairwise_f1(y, c) == pytest.approx(2 * p * r / (p + r))


def test_n_clusters_override_and_bad_values():
    x, y = random_embeddings()
    assert cluster_metrics(x, y, n_clusters=1)["nmi"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_metrics(x, y, n_clusters=len(y) + 1)


# --- retrieval --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_matches_pytorch_metric_learning_on_random_embeddings(seed):
    x, y = random_embeddings(seed=seed, spread=1.2)
    got = retrieval_metrics(x, y, ks=(1, 2, 4))
    want = pml_reference(x, y)
    assert got == pytest.approx(want, abs=1e-6)
    assert 0.05 < got["map@r"] < 0.95


def test_retrieval_on_a_hand_ordered_circle():
    # Angles (degrees) on the unit circle; every neighbour order is by angular gap, with no ties.
    # label:      0   1   0   0   1    1
    degrees = [0, 10, 25, 45, 70, 100]
    y = np.array([0, 1, 0, 0, 1, 1])
    # per query, neighbour classes and (R@1, R@2, AP@R with R = 2):
    #   0deg: 1 0 0 1 1 -> (0, 1, 1/4)   10deg: 0 0 0 1 1 -> (0, 0, 0)   25deg: 1 0 0 1 1 -> (0, 1, 1/4)
    #  45deg: 0 1 1 0 1 -> (1, 1, 1/2)   70deg: 0 1 0 1 0 -> (0, 1, 1/4) 100deg: 1 0 0 1 0 -> (1, 1, 1/2)
    got = retrieval_metrics(on_circle(degrees), y, ks=(1, 2, 4))
    want = {"recall@1": 2 / 6, "recall@2": 5 / 6, "recall@4": 1.0, "map@r": 1.75 / 6}
    assert got == pytest.approx(want)
    assert pml_reference(on_circle(degrees), y) == pytest.approx(want)


def test_queries_never_retrieve_their_own_clean_copy():
    # Two classes, two items each; the adversarial query i sits exactly on clean item i.
    clean = on_circle([0, 40, 20, 60])
    y = np.array([0, 0, 1, 1])
    got = retrieval_metrics(clean, y, ks=(1,), queries=clean.clone())
    # Nearest other item is always of the other class (gaps of 20 vs 40 degrees).
    assert got["recall@1"] == 0.0
    assert got == retrieval_metrics(clean, y, ks=(1,))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_queries_match_brute_force(seed):
    x, y = random_embeddings(seed=seed, spread=1.2)
    gen = torch.Generator().manual_seed(seed + 10)
    adversarial = F.normalize(x + 0.8 * torch.randn(x.shape, generator=gen), dim=1)
    got = retrieval_metrics(x, y, ks=(1, 2, 8), queries=adversarial)
    assert got == pytest.approx(brute_force_retrieval(x, y, adversarial, y, (1, 2, 8)), abs=1e-6)
    # with other query labels (e.g. a targeted attack's labels)
    other = (y + 1) % 12
    got = retrieval_metrics(x, y, ks=(1, 4), queries=adversarial, query_labels=other)
    assert got == pytest.approx(brute_force_retrieval(x, y, adversarial, other, (1, 4)), abs=1e-6)


def test_chunked_neighbours_equal_one_block(monkeypatch):
    x, y = random_embeddings(seed=4)
    whole = retrieval_metrics(x, y)
    monkeypatch.setattr(metrics, "NEIGHBOUR_CHUNK", 7)
    assert retrieval_metrics(x, y) == whole


def test_lone_queries_are_left_out():
    x, y = random_embeddings(seed=5)
    y_with_singleton = y.copy()
    y_with_singleton[0] = 99  # its own class: no answer exists
    got = retrieval_metrics(x, y_with_singleton)
    want = brute_force_retrieval(x, y_with_singleton, x, y_with_singleton, (1, 2, 4, 8))
    assert got == pytest.approx(want, abs=1e-6)


def test_bad_inputs_name_the_problem():
    x, y = random_embeddings()
    with pytest.raises(ValueError, match="one-to-one"):
        retrieval_metrics(x, y, queries=x[:5])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match="one entry per embedding"):
        cluster_metrics(x, y[:-1])
    with pytest.raises(ValueError, match="largest K"):
        retrieval_metrics(x[:4], y[:4], ks=(8,))
    with pytest.raises(ValueError, match="query_labels"):
        retrieval_metrics(x, y, query_labels=y)
    with pytest.raises(ValueError, match="same-class"):
        retrieval_metrics(x[:3], np.arange(3), ks=(1,))


def test_embedding_metrics_merges_both_as_python_floats():
    x, y = random_embeddings()
    got = embedding_metrics(x.numpy(), y, seed=1)
    assert set(got) == {"nmi", "ami", "ari", "f1", "purity", "recall@1", "recall@2", "recall@4", "recall@8", "map@r"}
    assert all(type(v) is float for v in got.values())
    assert got["nmi"] == cluster_metrics(x, y, seed=1)["nmi"]
