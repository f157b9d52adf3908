"""Evaluation noise: k-means seeds and a paired class bootstrap, on synthetic embeddings with known structure."""

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_mutual_info_score

from eatlib.metrics import kmeans_assign
from eatlib.noise import bootstrap_scores, class_draws, evaluation_noise, label_fingerprint


def _blobs(n_classes: int = 12, per_class: int = 6, spread: float = 0.05, seed: int = 0):
    """Embeddings of ``n_classes`` tight (small spread) or overlapping (large spread) clusters, labels shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(n_classes) * 3 + 5, per_class))   # non-contiguous ids
    centres = rng.normal(size=(n_classes, 16))
    _, inverse = np.unique(labels, return_inverse=True)
    return (centres[inverse] + spread * rng.normal(size=(len(labels), 16))).astype(np.float32), labels


def test_kmeans_values_have_one_entry_per_seed_and_are_in_range():
    x, y = _blobs(spread=1.0)
    noise = evaluation_noise(x, y, seed=3, kmeans_seeds=4, bootstrap=10)
    assert noise["kmeans"]["seeds"] == [3000, 3001, 3002, 3003]
    for metric in ("ami", "ari"):
        values = noise["kmeans"][metric]["values"]
        assert len(values) == 4
        assert all(-0.5 <= v <= 1.0 for v in values)
        assert noise["kmeans"][metric]["mean"] == pytest.approx(np.mean(values), abs=1e-6)
        assert noise["kmeans"][metric]["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
        assert len(noise["bootstrap"][metric]) == 10
    assert (noise["images"], noise["classes"]) == (len(y), 12)
    json.dumps(noise)   # JSON-ready: plain floats and ints only


def test_kmeans_values_are_the_seeded_kmeans_scores():
    x, y = _blobs(spread=1.0)
    noise = evaluation_noise(x, y, seed=2, kmeans_seeds=2, bootstrap=0)
    expected = adjusted_mutual_info_score(y, kmeans_assign(x, 12, seed=2001))
    assert noise["kmeans"]["ami"]["values"][1] == pytest.approx(expected, abs=1e-6)


def test_class_draws_depend_only_on_seed_and_the_label_set():
    _, y = _blobs()
    draws = class_draws(y, seed=4, replicates=30)
    assert draws.shape == (30, 12)
    np.testing.assert_array_equal(draws, class_draws(np.random.default_rng(1).permutation(y), seed=4, replicates=30))
    assert not np.array_equal(draws, class_draws(y, seed=5, replicates=30))
    assert label_fingerprint(y) != label_fingerprint(y[y != y[0]])


def test_two_models_on_the_same_images_get_the_same_class_draws():
    """Replicate b of each model is scored on class_draws(...)[b] with k-means seed b mod kmeans_seeds: paired."""
    x_a, y = _blobs(spread=0.3, seed=0)
    x_b = x_a + np.random.default_rng(9).normal(scale=1.0, size=x_a.shape).astype(np.float32)
    a = evaluation_noise(x_a, y, seed=1, kmeans_seeds=2, bootstrap=6)
    b = evaluation_noise(x_b, y, seed=1, kmeans_seeds=2, bootstrap=6)
    assert (a["seed"], a["labels_crc"]) == (b["seed"], b["labels_crc"])
    draws = class_draws(y, seed=1, replicates=6)
    for noise, x in ((a, x_a), (b, x_b)):
        clusterings = [kmeans_assign(x, 12, seed=1000 + j) for j in range(2)]
        for rep in (0, 3, 5):
            expected = bootstrap_scores(y, clusterings[rep % 2], draws[rep])
            assert noise["bootstrap"]["ami"][rep] == pytest.approx(expected["ami"], abs=1e-6)
            assert noise["bootstrap"]["ari"][rep] == pytest.approx(expected["ari"], abs=1e-6)


def test_duplicated_classes_stay_distinct_so_a_perfect_clustering_scores_one():
    _, y = _blobs()
    perfect = np.unique(y, return_inverse=True)[1]        # cluster id = class
    draw = np.array([0, 0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 7])  # duplicates and missing classes
    scores = bootstrap_scores(y, perfect, draw)
    assert scores["ami"] == pytest.approx(1.0)
    assert scores["ari"] == pytest.approx(1.0)
    # Without the per-copy offset the three copies of class 0 would share one cluster and score below 1.
    rows = np.flatnonzero(perfect == 0)
    merged = adjusted_mutual_info_score(np.repeat([0, 1, 2], len(rows)), np.tile(perfect[rows], 3))
    assert merged < 0.5
    x, _ = _blobs(spread=0.01)
    noise = evaluation_noise(x, y, seed=0, kmeans_seeds=2, bootstrap=20)
    assert min(noise["bootstrap"]["ami"]) > 0.99
    assert any(len(set(d)) < len(d) for d in class_draws(y, seed=0, replicates=20))


def test_bad_inputs_are_errors_that_say_what_is_wrong():
    x, y = _blobs()
    with pytest.raises(ValueError, match="kmeans_seeds"):
        evaluation_noise(x, y, seed=0, kmeans_seeds=0)
    with pytest.raises(ValueError, match="2 classes"):
        evaluation_noise(x, np.zeros(len(y), dtype=np.int64), seed=0)
