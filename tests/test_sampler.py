"""ClassBalancedBatchSampler: P classes x m images per batch, reproducible from (seed, epoch), rank-disjoint."""

from __future__ import annotations

from collections import Counter
from math import comb

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from eatlib.data import ClassBalancedBatchSampler


def uneven_labels(seed: int = 0) -> np.ndarray:
    """30 classes of 2..20 images each, shuffled (sizes vary so class weighting matters)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(30), rng.integers(2, 21, size=30))
    return rng.permutation(labels)


def test_every_batch_has_p_classes_with_m_images_each():
    labels = uneven_labels()
    sampler = ClassBalancedBatchSampler(labels, batch_size=24, samples_per_class=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(labels) // 24
    for batch in batches:
        assert len(batch) == 24
        counts = Counter(labels[batch].tolist())
        assert len(counts) == 6 and set(counts.values()) == {4}
        for c in counts:  # no duplicate image within a class group unless the class is smaller than m
            group = [i for i in batch if labels[i] == c]
            assert len(set(group)) == min(4, int((labels == c).sum()))


def iid_coverage(num_images: int, draws: int) -> float:
    """Expected fraction of images seen by ``draws`` i.i.d. uniform draws with replacement: 1 - (1 - 1/N)^draws."""
    return 1 - (1 - 1 / num_images) ** draws


def balanced_coverage(classes: int, per_class: int, classes_per_batch: int, m: int, batches: int) -> float:
    """Expected coverage of this sampler's design when every class is equally likely: a class is picked by a batch
    with probability p = P / C, K ~ Binomial(batches, p) times, and hands out min(n, m K) distinct images."""
    p = classes_per_batch / classes
    return sum(comb(batches, k) * p**k * (1 - p) ** (batches - k) * min(per_class, m * k)
               for k in range(batches + 1)) / per_class


def test_an_epoch_covers_the_images_evenly():
    labels = np.repeat(np.arange(20), 12)  # 240 images, 10 batches of 24 -> every image once in expectation
    floor = iid_coverage(len(labels), draws=240)  # about 0.633
    design = balanced_coverage(20, 12, classes_per_batch=6, m=4, batches=10)  # about 0.813
    assert floor == pytest.approx(0.6329, abs=1e-4) and design > floor
    coverages = []
    for seed in range(10):
        sampler = ClassBalancedBatchSampler(labels, batch_size=24, samples_per_class=4, seed=seed)
        seen = Counter(i for batch in sampler for i in batch)
        coverages.append(len(seen) / len(labels))
        assert coverages[-1] >= floor, seed  # never worse than i.i.d. draws with replacement
        assert max(seen.values()) <= 3
    # A class's images come from a permutation, so the mean matches the design, not i.i.d. draws.
    assert np.mean(coverages) == pytest.approx(design, abs=0.03)


def test_same_seed_and_epoch_give_same_batches_other_epoch_differs():
    labels = uneven_labels()
    a = ClassBalancedBatchSampler(labels, 24, 4, seed=7)
    b = ClassBalancedBatchSampler(labels, 24, 4, seed=7)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)
    np.random.seed(123)  # the global RNGs play no part
    torch.manual_seed(123)
    assert list(a) == list(b)
    epoch5 = list(a)
    a.set_epoch(6)
    assert list(a) != epoch5
    assert list(ClassBalancedBatchSampler(labels, 24, 4, seed=8)) != list(ClassBalancedBatchSampler(labels, 24, 4, 7))


def test_resumed_run_sees_the_batches_of_an_uninterrupted_run():
    labels = uneven_labels()
    uninterrupted = ClassBalancedBatchSampler(labels, 24, 4, seed=1)
    history = []
    for epoch in range(3):
        uninterrupted.set_epoch(epoch)
        history.append(list(uninterrupted))
    resumed = ClassBalancedBatchSampler(labels, 24, 4, seed=1)
    resumed.set_epoch(2)
    assert list(resumed) == history[2]


def test_ranks_get_disjoint_equal_shares_of_the_epoch():
    labels = uneven_labels()
    samplers = [ClassBalancedBatchSampler(labels, 12, 3, seed=0, rank=r, world_size=3) for r in range(3)]
    for s in samplers:
        s.set_epoch(4)
    shares = [list(s) for s in samplers]
    assert len({len(share) for share in shares}) == 1 and len(shares[0]) == len(labels) // 36
    as_tuples = [{tuple(b) for b in share} for share in shares]
    assert not (as_tuples[0] & as_tuples[1] or as_tuples[0] & as_tuples[2] or as_tuples[1] & as_tuples[2])
    everything = samplers[0].epoch_batches(4)
    assert [b for share in zip(*shares, strict=True) for b in share] == everything[: 3 * len(shares[0])]


def test_works_as_a_dataloader_batch_sampler():
    labels = uneven_labels()
    dataset = TensorDataset(torch.arange(len(labels)), torch.from_numpy(labels))
    loader = DataLoader(dataset, batch_sampler=ClassBalancedBatchSampler(labels, 16, 2, seed=0))
    indices, batch_labels = next(iter(loader))
    assert indices.shape == (16,) and torch.equal(batch_labels, torch.from_numpy(labels[indices.numpy()]))


def test_bad_arguments_are_explained():
    labels = uneven_labels()
    with pytest.raises(ValueError, match="multiple of samples_per_class"):
        ClassBalancedBatchSampler(labels, 25, 4, seed=0)
    with pytest.raises(ValueError, match="distinct classes"):
        ClassBalancedBatchSampler(labels, 248, 4, seed=0)  # 62 classes per batch, only 30 exist
    with pytest.raises(ValueError, match="rank"):
        ClassBalancedBatchSampler(labels, 24, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no full batch"):
        ClassBalancedBatchSampler(np.repeat(np.arange(6), 2), 12, 2, seed=0, world_size=2)
