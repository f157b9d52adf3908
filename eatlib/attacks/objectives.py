"""Objectives on embeddings: what an attack on clustering-based inference maximises.

An objective is prepared ONCE on the clean embeddings of the whole attacked set (k-means centres, clean
assignments, targets), then bound to a batch by its positions in that set (``objective.batch(index)``), which
gathers the batch's rows once; the bound function maps the adversarial embeddings ``[B, D]`` to one value per
sample ``[B]`` to MAXIMISE and is cheap enough to call at every attack step.

Embeddings are L2-normalised, so the squared distance to a centre ``c`` is ``1 - 2 z.c + |c|^2``: k-means'
own assignment rule, evaluated with one matrix product (``centroid`` even needs only a dot product per sample).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BatchObjective = Callable[[torch.Tensor], torch.Tensor]


def kmeans_centres(embeddings: torch.Tensor, n_clusters: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean clustering the deployed system computes: ``eatlib.metrics.kmeans_assign`` (the same seeded
    k-means as the clean evaluation), and its centres as cluster means. Returns ``(centres [K, D] float32,
    assignments [N] int64)``."""
    from eatlib.metrics import kmeans_assign

    if not 2 <= n_clusters <= len(embeddings):
        raise ValueError(f"n_clusters must be in [2, {len(embeddings)}] (the number of embeddings), got {n_clusters}")
    x = F.normalize(embeddings.detach().cpu().float(), dim=1)
    assignment = torch.as_tensor(kmeans_assign(x, n_clusters, seed=seed), dtype=torch.long)
    sums = torch.zeros(n_clusters, x.shape[1], dtype=torch.float64).index_add_(0, assignment, x.double())
    counts = torch.bincount(assignment, minlength=n_clusters).clamp_min(1).unsqueeze(1)
    return (sums / counts).float(), assignment


class Objective:
    """Base class. Subclasses set their state in :meth:`prepare` and return the per-batch function in
    :meth:`_bind` from tensors already on the embeddings' device."""

    name = "objective"
    needs_labels = False
    # The spec keys of this objective (eatlib.attacks.spec): key -> (default, kind, allowed values or None).
    spec_keys: dict[str, tuple] = {}

    @classmethod
    def from_spec(cls, spec: dict, *, seed: int = 0) -> Objective:
        """The (unprepared) objective a validated spec names; ``seed`` seeds its k-means and random targets."""
        return cls()

    def __init__(self):
        self._state: dict[str, torch.Tensor] | None = None
        self._on_device: dict[str, torch.Tensor] = {}

    @property
    def prepared(self) -> bool:
        return self._state is not None

    @property
    def size(self) -> int:
        """Number of samples of the set the objective was prepared on."""
        self._check_prepared()
        return len(self._state["clean"])

    def prepare(self, clean_embeddings: torch.Tensor, labels=None) -> Objective:
        """Precompute everything from the clean embeddings ``[N, D]`` of the whole attacked set (and its labels
        ``[N]`` for objectives that use them). Returns ``self``."""
        clean = torch.as_tensor(clean_embeddings).detach().float().cpu()
        if clean.ndim != 2 or len(clean) == 0:
            raise ValueError(f"clean_embeddings must be a non-empty [N, D] tensor, got shape {tuple(clean.shape)}")
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).cpu()
            if labels.shape != (len(clean),):
                raise ValueError(f"labels must have shape [{len(clean)}], got {tuple(labels.shape)}")
        elif self.needs_labels:
            raise ValueError(f"objective {self.name!r} uses the labels: pass labels to prepare()")
        self._state = {"clean": clean, **self._prepare(clean, labels)}
        self._on_device = {}
        return self

    def _prepare(self, clean: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return {}

    def batch(self, index: torch.Tensor, device: torch.device | str | None = None) -> BatchObjective:
        """Bind to the samples at positions ``index [B]`` of the prepared set; returns ``f(embeddings [B, D]) ->
        values [B]``. Gathers the batch's rows once, not at every step."""
        self._check_prepared()
        device = torch.device(device) if device is not None else index.device
        state = self._state_on(device)
        index = torch.as_tensor(index, dtype=torch.long, device=device)
        if index.ndim != 1:
            raise ValueError(f"index must be a 1-d LongTensor of positions, got shape {tuple(index.shape)}")
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.size):
            raise IndexError(f"index out of range for an objective prepared on {self.size} samples")
        return self._bind(state, index)

    def __call__(self, embeddings: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Values ``[B]`` to maximise for ``embeddings [B, D]`` of the samples at positions ``index [B]``."""
        return self.batch(index, embeddings.device)(embeddings)

    def _bind(self, state: dict[str, torch.Tensor], index: torch.Tensor) -> BatchObjective:
        raise NotImplementedError

    def _state_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._on_device:
            self._on_device = {key: {k: v.to(device) for k, v in self._state.items()}}
        return self._on_device[key]

    def _check_prepared(self):
        if self._state is None:
            raise RuntimeError(
                f"objective {self.name!r} is not prepared: call objective.prepare(clean_embeddings, labels) on "
                "the clean embeddings of the whole attacked set first"
            )

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({options})"

    def options(self) -> dict:
        return {}


class EmbeddingShift(Objective):
    """Move each embedding away from its clean embedding: value ``|z - z_clean|^2 = 2 - 2 z.z_clean``."""

    name = "embedding_shift"

    def _bind(self, state, index):
        clean = state["clean"][index]
        return lambda z: 2.0 - 2.0 * (z * clean).sum(1)


class Centroid(Objective):
    """Push each embedding away from its own clean k-means centre, towards a target centre.

    value = ``push * d(z, c_own) - d(z, c_target)`` (squared Euclidean distances, as k-means assigns), capped at
    ``margin`` like the C&W margin (``None``: no cap, keep pushing deeper into the target cluster). With
    ``push=1`` (default) it is the margin ``d_own - d_target``, positive once the sample would be assigned to the
    target; its maximiser on the sphere points along ``c_target - c_own`` and so still carries the own cluster,
    which matters only when the budget is large: ``push=0`` pulls to the target centre itself (then a large eps
    erases the clustering completely). Centres come from the seeded k-means of the clean evaluation, with
    ``n_clusters`` (default: the number of distinct labels) on the clean embeddings.

    Targets, drawn once at :meth:`prepare` (seeded): ``"nearest"``, the nearest other centre to the clean
    embedding, or with ``candidates = m > 1`` one of the m nearest at random; ``"random"``, any other centre.
    Moving whole clusters onto their neighbours keeps them pure (k-means on the adversarial set simply finds
    them again), so targets that scatter each cluster (``random``, or ``candidates > 1``) hurt clustering
    more on an undefended model, while the nearest centre is the one a small budget can reach on a robust one.
    """

    name = "centroid"
    TARGETS = ("nearest", "random")
    spec_keys = {"target": ("nearest", "str", TARGETS), "candidates": (1, "int", None),
                 "push": (1.0, "nonneg", None), "margin": (None, "kappa", None), "n_clusters": (None, "int", None)}

    @classmethod
    def from_spec(cls, spec, *, seed=0):
        return cls(spec["target"], spec["margin"], candidates=spec["candidates"], push=spec["push"],
                   n_clusters=spec["n_clusters"], seed=seed)

    def __init__(self, target: str = "nearest", margin: float | None = None, *, candidates: int = 1,
                 push: float = 1.0, n_clusters: int | None = None, seed: int = 0):
        super().__init__()
        if target not in self.TARGETS:
            raise ValueError(f"target must be one of {self.TARGETS}, got {target!r}")
        if int(candidates) < 1 or (target == "random" and candidates != 1):
            raise ValueError(f"candidates must be an integer >= 1, and 1 with target 'random'; got {candidates}")
        if not 0 <= push <= 1:
            raise ValueError(f"push must be in [0, 1], got {push}")
        self.target, self.margin, self.candidates, self.push = target, margin, int(candidates), float(push)
        self.n_clusters, self.seed = n_clusters, seed

    def options(self):
        return {"target": self.target, "candidates": self.candidates, "push": self.push, "margin": self.margin,
                "n_clusters": self.n_clusters, "seed": self.seed}

    def _prepare(self, clean, labels):
        k = _n_clusters(self.n_clusters, labels, self.name)
        if self.candidates > k - 1:
            raise ValueError(f"candidates ({self.candidates}) must be at most the number of other centres ({k - 1})")
        centres, assignment = kmeans_centres(clean, k, seed=self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.arange(len(clean))
        if self.target == "nearest":
            distances = _sq_distances(clean, centres)
            distances[rows, assignment] = float("inf")
            nearest = distances.topk(self.candidates, dim=1, largest=False).indices
            target = nearest[rows, torch.randint(0, self.candidates, (len(clean),), generator=generator)]
        else:
            # A uniform draw among the other K-1 centres: shift past the own one.
            draw = torch.randint(0, k - 1, (len(clean),), generator=generator)
            target = draw + (draw >= assignment).long()
        return {"centres": centres, "assignment": assignment, "target": target}

    def _bind(self, state, index):
        own, target = state["centres"][state["assignment"][index]], state["centres"][state["target"][index]]
        # push d(z, own) - d(z, target) = 2 z.(target - push own) + push |own|^2 - |target|^2 + push - 1 (|z| = 1):
        # linear in z, so one fused dot product per sample and step.
        direction = 2.0 * (target - self.push * own)
        offset = self.push * own.pow(2).sum(1) - target.pow(2).sum(1) + (self.push - 1.0)
        margin = self.margin
        if margin is None:
            return lambda z: (z * direction).sum(1) + offset
        return lambda z: ((z * direction).sum(1) + offset).clamp(max=margin)


class SoftAssignment(Objective):
    """Divergence of soft k-means assignments from the clean ones: value ``KL(q_clean || p(z))`` with
    ``p_j(z) = softmax_j(-|z - c_j|^2 / temperature)`` over the clean k-means centres."""

    name = "soft_assignment"
    spec_keys = {"temperature": (0.05, "pos", None), "n_clusters": (None, "int", None)}

    @classmethod
    def from_spec(cls, spec, *, seed=0):
        return cls(spec["temperature"], n_clusters=spec["n_clusters"], seed=seed)

    def __init__(self, temperature: float = 0.05, *, n_clusters: int | None = None, seed: int = 0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.n_clusters, self.seed = temperature, n_clusters, seed

    def options(self):
        return {"temperature": self.temperature, "n_clusters": self.n_clusters, "seed": self.seed}

    def _prepare(self, clean, labels):
        centres, _ = kmeans_centres(clean, _n_clusters(self.n_clusters, labels, self.name), seed=self.seed)
        clean_log_p = self._log_assign(clean, centres, centres.pow(2).sum(1))
        return {"centres": centres, "clean_log_p": clean_log_p}

    def _log_assign(self, z, centres, sq_norms):
        # -|z - c|^2 = 2 z.c - |c|^2 - 1; the constant cancels in the softmax.
        return F.log_softmax((2.0 * z @ centres.T - sq_norms) / self.temperature, dim=1)

    def _bind(self, state, index):
        centres = state["centres"]
        sq_norms = centres.pow(2).sum(1)
        log_q = state["clean_log_p"][index]
        q = log_q.exp()
        q_log_q = (q * log_q).sum(1)
        return lambda z: q_log_q - (q * self._log_assign(z, centres, sq_norms)).sum(1)


class DMLLoss(Objective):
    """The metric-learning loss with the test labels: ``loss(embeddings, labels) -> scalar`` (the literal
    adaptation of classification PGD; the attacker knows the labels).

    Default loss: pytorch-metric-learning's Proxy-Anchor (margin 0.1, alpha 32, the training defaults). The
    test classes have no trained proxies, so its proxies are the normalised class means of the clean test
    embeddings (the proxies a model trained on those classes would approach). Any other ``loss`` object is used
    as given (a proxy loss must already hold proxies for the test classes). The loss couples the samples of a
    batch, so each sample's value is the batch loss divided by the batch size (the sum is the batch loss, which
    is what the gradient follows); restarts then keep the best restart per batch.
    """

    name = "dml_loss"
    needs_labels = True
    spec_keys = {"loss_margin": (0.1, "nonneg", None), "loss_alpha": (32.0, "pos", None)}

    @classmethod
    def from_spec(cls, spec, *, seed=0):
        return cls(margin=spec["loss_margin"], alpha=spec["loss_alpha"])

    def __init__(self, loss: nn.Module | None = None, *, margin: float = 0.1, alpha: float = 32.0):
        super().__init__()
        self.loss, self.loss_margin, self.loss_alpha = loss, margin, alpha
        self._class_mean_proxies = loss is None

    def options(self):
        if self._class_mean_proxies:
            return {"loss": "proxy_anchor", "margin": self.loss_margin, "alpha": self.loss_alpha}
        return {"loss": type(self.loss).__name__}

    def _prepare(self, clean, labels):
        if self._class_mean_proxies:
            from pytorch_metric_learning.losses import ProxyAnchorLoss

            # Test classes need not be contiguous (a subset of them): proxies for the classes present.
            classes, labels = torch.unique(labels, return_inverse=True)
            num_classes = len(classes)
            sums = torch.zeros(num_classes, clean.shape[1]).index_add_(0, labels, clean)
            loss = ProxyAnchorLoss(num_classes, clean.shape[1], margin=self.loss_margin, alpha=self.loss_alpha)
            with torch.no_grad():
                loss.proxies.copy_(F.normalize(sums, dim=1))
            loss.proxies.requires_grad_(False)
            self.loss = loss
        return {"labels": labels}

    def _bind(self, state, index):
        labels = state["labels"][index]
        loss = self.loss.to(labels.device)
        return lambda z: loss(z, labels).expand(len(z)) / len(z)


class Margin(Objective):
    """The k-means assignment margin: value ``d(z, c_own) - min_{j != own} d(z, c_j)`` (squared distances to
    the clean k-means centres), positive exactly when the sample would be assigned to another cluster.

    The untargeted counterpart of :class:`Centroid`: the nearest other centre is taken at every step, so
    maximising it crosses the closest boundary (the C&W / AutoAttack margin loss with clustering in place of
    logits). The strong protocol (:mod:`eatlib.strong`) also ranks every attack's images by it.
    """

    name = "margin"
    spec_keys = {"n_clusters": (None, "int", None)}

    @classmethod
    def from_spec(cls, spec, *, seed=0):
        return cls(n_clusters=spec["n_clusters"], seed=seed)

    def __init__(self, *, n_clusters: int | None = None, seed: int = 0):
        super().__init__()
        self.n_clusters, self.seed = n_clusters, seed

    def options(self):
        return {"n_clusters": self.n_clusters, "seed": self.seed}

    def _prepare(self, clean, labels):
        centres, assignment = kmeans_centres(clean, _n_clusters(self.n_clusters, labels, self.name), seed=self.seed)
        return {"centres": centres, "assignment": assignment}

    def _bind(self, state, index):
        centres = state["centres"]
        own = state["assignment"][index]
        sq_norms = centres.pow(2).sum(1)
        own_mask = F.one_hot(own, len(centres)).bool()

        def value(z):
            # d_j - |z|^2 = |c_j|^2 - 2 z.c_j: the |z|^2 term cancels in the difference.
            distances = sq_norms - 2.0 * z @ centres.T
            d_own = distances.gather(1, own[:, None]).squeeze(1)
            return d_own - distances.masked_fill(own_mask, float("inf")).min(1).values

        return value


class MultiTarget(Objective):
    """Targeted centroid margins toward the ``targets`` nearest other clean k-means centres of each sample.

    value = ``max_t d(z, c_own) - d(z, c_t)`` over the sample's targets (the per-sample best target), which
    ranks the runs; :meth:`for_target` gives the single-target objective of each target slot, one attack run
    each. ``build_attack`` runs an optimiser with this objective as a
    :class:`eatlib.attacks.multitarget.MultiTargetAttack`: one run per target, per sample the best run kept.
    As a loss, ``targets = K - 1`` is :class:`Margin`.
    """

    name = "multi_target"
    spec_keys = {"targets": (3, "int", None), "n_clusters": (None, "int", None)}

    @classmethod
    def from_spec(cls, spec, *, seed=0):
        return cls(spec["targets"], n_clusters=spec["n_clusters"], seed=seed)

    def __init__(self, targets: int = 3, *, n_clusters: int | None = None, seed: int = 0):
        super().__init__()
        if isinstance(targets, bool) or int(targets) < 1:
            raise ValueError(f"targets must be an integer >= 1, got {targets}")
        self.targets, self.n_clusters, self.seed = int(targets), n_clusters, seed

    def options(self):
        return {"targets": self.targets, "n_clusters": self.n_clusters, "seed": self.seed}

    def _prepare(self, clean, labels):
        k = _n_clusters(self.n_clusters, labels, self.name)
        if self.targets > k - 1:
            raise ValueError(f"targets ({self.targets}) must be at most the number of other centres ({k - 1})")
        centres, assignment = kmeans_centres(clean, k, seed=self.seed)
        distances = _sq_distances(clean, centres)
        distances[torch.arange(len(clean)), assignment] = float("inf")
        nearest = distances.topk(self.targets, dim=1, largest=False).indices  # [N, T], nearest first
        return {"centres": centres, "assignment": assignment, "targets": nearest}

    def _bind(self, state, index):
        centres = state["centres"]
        own, targets = centres[state["assignment"][index]], centres[state["targets"][index]]  # [B, D], [B, T, D]
        # d_own - d_t = 2 z.(c_t - c_own) + |c_own|^2 - |c_t|^2 (|z| = 1), for every target at once.
        direction = 2.0 * (targets - own[:, None])
        offset = own.pow(2).sum(1, keepdim=True) - targets.pow(2).sum(2)
        return lambda z: (torch.einsum("bd,btd->bt", z, direction) + offset).max(1).values

    def for_target(self, slot: int) -> Objective:
        """The prepared single-target objective of target slot ``slot`` (0: the nearest other centre)."""
        self._check_prepared()
        if not 0 <= slot < self.targets:
            raise ValueError(f"slot must be in [0, {self.targets}), got {slot}")
        return _TargetSlot(self, slot)


class _TargetSlot(Objective):
    """Target slot ``slot`` of a prepared :class:`MultiTarget`: ``d(z, c_own) - d(z, c_target)`` (its state shared)."""

    name = "multi_target_slot"

    def __init__(self, parent: MultiTarget, slot: int):
        super().__init__()
        self.parent, self.slot = parent, slot
        self._state = parent._state

    def options(self):
        return {**self.parent.options(), "slot": self.slot}

    def _state_on(self, device):
        return self.parent._state_on(device)

    def _bind(self, state, index):
        centres = state["centres"]
        own, target = centres[state["assignment"][index]], centres[state["targets"][index, self.slot]]
        direction = 2.0 * (target - own)
        offset = own.pow(2).sum(1) - target.pow(2).sum(1)
        return lambda z: (z * direction).sum(1) + offset


def _sq_distances(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return (z.pow(2).sum(1, keepdim=True) - 2.0 * z @ centres.T + centres.pow(2).sum(1)).clamp_(min=0)


def _n_clusters(n_clusters: int | None, labels: torch.Tensor | None, name: str) -> int:
    if n_clusters is not None:
        return int(n_clusters)
    if labels is None:
        raise ValueError(
            f"objective {name!r} needs the number of clusters: pass n_clusters=, or labels to prepare() "
            "(k = number of distinct labels, as the deployed k-means uses)"
        )
    return int(torch.unique(labels).numel())


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (EmbeddingShift, Centroid, SoftAssignment, DMLLoss, Margin, MultiTarget)
}
