"""Class-balanced batches for metric learning: P classes x m images per batch, reproducible per epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset indices: `batch_size // samples_per_class` distinct classes, `samples_per_class`
    (m) images of each. Use as `DataLoader(dataset, batch_sampler=sampler)`.

    Epoch: `len(labels) // (batch_size * world_size)` batches per rank, so one epoch shows about every image once.
    Classes are drawn without replacement within a batch, with probability proportional to their size; each
    class hands out its images from a fresh random permutation (and a new one when it runs out), so images are
    spread evenly. Only a class with fewer than m images repeats images within its group.

    Reproducibility: the batches of an epoch depend only on (seed, epoch). Call `set_epoch(epoch)` before each
    epoch (as with DistributedSampler); a run resumed at epoch k sees exactly the batches of an uninterrupted run.
    With `world_size > 1`, all ranks compute the same batch list and rank r takes batches r, r + world_size, ...,
    so ranks get disjoint shares of the epoch's batches and the same number of them.

    Why not pytorch-metric-learning's MPerClassSampler: it draws from the global NumPy RNG (`c_f.NUMPY_RANDOM`)
    and shuffles its label list in place across epochs, so the batches of epoch k depend on everything that used
    the global RNG before (a resumed run cannot reproduce them); it also samples every image independently with
    replacement, and it has no notion of distributed ranks.

    labels: int class label per dataset index [N]; batch_size must be a multiple of samples_per_class and the
    dataset must have at least batch_size // samples_per_class classes.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        batch_size: int,
        samples_per_class: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {labels.shape}")
        if samples_per_class < 1 or batch_size < 1 or batch_size % samples_per_class:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of samples_per_class ({samples_per_class});"
                f" e.g. batch_size={max(1, batch_size // max(1, samples_per_class)) * max(1, samples_per_class)}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.class_ids, inverse = np.unique(labels, return_inverse=True)
        self.classes_per_batch = batch_size // samples_per_class
        if self.classes_per_batch > len(self.class_ids):
            raise ValueError(
                f"a batch needs {self.classes_per_batch} distinct classes (batch_size {batch_size} / "
                f"samples_per_class {samples_per_class}) but the labels hold only {len(self.class_ids)}; "
                f"lower batch_size or raise samples_per_class"
            )
        num_batches = len(labels) // (batch_size * world_size)
        if num_batches == 0:
            raise ValueError(
                f"{len(labels)} images make no full batch of {batch_size} per rank (world_size {world_size})"
            )
        order = np.argsort(inverse, kind="stable")
        self.members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])  # indices of each class
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_batches = num_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)[self.rank :: self.world_size][: self.num_batches]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of `epoch` (num_batches * world_size of them), before the split by rank."""
        rng = np.random.default_rng([self.seed, epoch])
        sizes = np.array([len(m) for m in self.members], dtype=np.float64)
        weights = sizes / sizes.sum()
        queues = [rng.permutation(m) for m in self.members]
        cursors = np.zeros(len(self.members), dtype=np.int64)
        batches = []
        for _ in range(self.num_batches * self.world_size):
            batch = []
            for c in rng.choice(len(self.members), size=self.classes_per_batch, replace=False, p=weights):
                batch.extend(self._take(c, queues, cursors, rng))
            batches.append(batch)
        return batches

    def _take(self, c: int, queues: list[np.ndarray], cursors: np.ndarray, rng: np.random.Generator) -> list[int]:
        """The next samples_per_class indices of class c, reshuffling its images whenever they run out."""
        taken: list[int] = []
        while len(taken) < self.samples_per_class:
            if cursors[c] == len(queues[c]):
                fresh = rng.permutation(self.members[c])
                repeat = np.isin(fresh, taken)  # images already in this group go last: no needless duplicates
                queues[c] = np.concatenate([fresh[~repeat], fresh[repeat]])
                cursors[c] = 0
            need = self.samples_per_class - len(taken)
            chunk = queues[c][cursors[c] : cursors[c] + need]
            taken.extend(int(i) for i in chunk)
            cursors[c] += len(chunk)
        return taken
