"""EAT's diversity from data splits: which training samples each member of an ensemble learns from.

A split is a *membership* matrix ``[M, N]`` (members x training samples) of int64 multiplicities, drawn once from
the seed: member ``m`` trains on sample ``i`` ``membership[m, i]`` times (0 = never). Schemes, with the N
training samples cut into M random parts of equal size (+-1):

- ``complement`` (default): member m trains on every part but part m (each sample is seen by M - 1 members);
- ``disjoint``: member m trains on part m only;
- ``bootstrap``: member m trains on a bootstrap resample of the N samples (with replacement: counts >= 0);
- ``none``: every member trains on every sample (the ablation without data diversity).

During training a batch is split by its dataset indices (:func:`batch_share`), so a member's parameters and
BatchNorm statistics are only ever updated from its own samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def random_parts(members: int, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Part id ``[N]`` of every sample: a random permutation dealt round-robin into ``members`` equal parts."""
    part = torch.empty(num_samples, dtype=torch.long)
    part[torch.randperm(num_samples, generator=generator)] = torch.arange(num_samples) % members
    return part


def complement(members: int, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    part = random_parts(members, num_samples, generator)
    return (part[None, :] != torch.arange(members)[:, None]).long()


def disjoint(members: int, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    part = random_parts(members, num_samples, generator)
    return (part[None, :] == torch.arange(members)[:, None]).long()


def bootstrap(members: int, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    draws = torch.randint(num_samples, (members, num_samples), generator=generator)
    return torch.stack([torch.bincount(row, minlength=num_samples) for row in draws])


def no_split(members: int, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    return torch.ones(members, num_samples, dtype=torch.long)


SPLITS: dict[str, Callable[[int, int, torch.Generator], torch.Tensor]] = {
    "complement": complement,
    "disjoint": disjoint,
    "bootstrap": bootstrap,
    "none": no_split,
}


def membership(split: str, members: int, num_samples: int, seed: int) -> torch.Tensor:
    """The ``[members, num_samples]`` multiplicities of scheme ``split`` (a key of :data:`SPLITS`), from ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {sorted(SPLITS)}")
    if members < 1 or num_samples < members:
        raise ValueError(f"need 1 <= members <= num_samples, got members={members}, num_samples={num_samples}")
    generator = torch.Generator().manual_seed(seed)
    return SPLITS[split](members, num_samples, generator)


def batch_share(counts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Positions in a batch that one member trains on: batch position ``b`` repeated ``counts[indices[b]]``
    times. ``counts [N]`` is the member's row of the membership; ``indices [B]`` the batch's dataset indices."""
    repeats = counts[indices.to(counts.device)].to(indices.device)
    return torch.repeat_interleave(torch.arange(len(indices), device=indices.device), repeats)
