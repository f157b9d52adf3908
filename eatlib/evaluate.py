"""Embedding a dataset and scoring it: the clean evaluation, and (below) the robustness evaluation."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from eatlib.attacks import HEADLINE, SWEEP_EPS, build_attack, eps_sweep, validate_suite
from eatlib.metrics import cluster_metrics, retrieval_metrics
from eatlib.models import fold_batchnorm
from eatlib.noise import evaluation_noise


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def embed(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 256, device: torch.device | str | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """Embed every image of ``dataset`` in order.

    Returns ``(embeddings [N, D] float32 on CPU, labels [N] int64)``. The model's train/eval mode is left as the
    caller set it: evaluation callers put it in eval mode first.
    """
    device = torch.device(device) if device is not None else model_device(model)
    images = getattr(dataset, "images", None)
    chunks = []
    if isinstance(images, torch.Tensor):
        # In-memory uint8 datasets: slicing beats a DataLoader by an order of magnitude on CPU.
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device, torch.float32).div_(255)
            chunks.append(model(batch).float().cpu())
    else:
        for batch, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            chunks.append(model(batch.to(device)).float().cpu())
    labels = np.asarray(dataset.labels, dtype=np.int64)
    return torch.cat(chunks), labels


# ---------------------------------------------------------------------------------------------------------------
# Robustness of clustering-based inference: perturb every input, re-embed, re-cluster, score.
# ---------------------------------------------------------------------------------------------------------------

def subset_indices(size: int, subset: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random subset of ``subset`` of ``size`` samples (all when ``None``)."""
    if subset is None or subset >= size:
        return np.arange(size)
    if subset < 2:
        raise ValueError(f"subset must be >= 2 images (or None for the whole split), got {subset}")
    return np.sort(np.random.default_rng(seed).choice(size, size=subset, replace=False))


class _View(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order; keeps the fast in-memory ``.images`` path."""

    def __init__(self, dataset: Dataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, indices
        self.labels = np.asarray(dataset.labels, dtype=np.int64)[indices]
        images = getattr(dataset, "images", None)
        if isinstance(images, torch.Tensor):
            self.images = images[torch.from_numpy(indices)]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])]

    def batches(self, batch_size: int, device: torch.device):
        """Yields ``(images [B,C,S,S] float in [0,1] on device, positions [B] on device)`` in order."""
        images = getattr(self, "images", None)
        start = 0
        if isinstance(images, torch.Tensor):
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size].to(device, torch.float32).div_(255)
                yield batch, torch.arange(start, start + len(batch), device=device)
        else:
            for batch, _ in DataLoader(self, batch_size=batch_size, shuffle=False):
                yield batch.to(device), torch.arange(start, start + len(batch), device=device)
                start += len(batch)


def attack_embeddings(
    attack,
    view: _View,
    *,
    target: nn.Module | None = None,
    batch_size: int = 128,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Perturb every image of ``view`` batch by batch with ``attack`` and embed the result with ``target``
    (default: the attacked model; another model for a transfer attack). Adversarial images are not kept, so
    memory stays at one batch whatever the image size. Returns ``(embeddings [N, D] on CPU, perturbation
    sizes {"linf_max", "l2_mean"})``."""
    target = attack.model if target is None else target
    device = device or model_device(attack.model)
    target_device = model_device(target)
    chunks, linf, l2_sum = [], 0.0, 0.0
    n_batches = -(-len(view) // batch_size)
    for images, index in tqdm(view.batches(batch_size, device), total=n_batches, desc=desc, disable=not progress,
                              leave=False):
        adversarial = attack(images, index)
        delta = (adversarial - images).flatten(1)
        linf = max(linf, float(delta.abs().max()))
        l2_sum += float(delta.norm(dim=1).sum())
        with torch.no_grad():
            chunks.append(target(adversarial.to(target_device)).float().cpu())
    return torch.cat(chunks), {"linf_max": linf, "l2_mean": l2_sum / len(view)}


def embedding_scores(
    embeddings: torch.Tensor, labels: np.ndarray, *, seed: int, clean: torch.Tensor | None = None
) -> dict[str, float]:
    """Clustering scores from a fresh seeded k-means on ``embeddings`` (k = number of classes) plus retrieval
    scores; with ``clean`` given, ``embeddings`` are adversarial queries searched against the clean set."""
    scores = dict(cluster_metrics(embeddings, labels, seed=seed))
    if clean is None:
        scores.update(retrieval_metrics(embeddings, labels))
    else:
        scores.update(retrieval_metrics(clean, labels, queries=embeddings, query_labels=labels))
    return scores


def evaluate_robustness(
    model: nn.Module,
    dataset: Dataset,
    suite,
    *,
    seed: int = 0,
    subset: int | None = None,
    subset_seed: int | None = None,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    surrogate: nn.Module | None = None,
    noise: Mapping | None = None,
    progress: bool = True,
    amp: bool = False,
    channels_last: bool = True,
    fold: bool = True,
) -> dict:
    """Clean and adversarial clustering/retrieval scores of ``model`` on ``dataset`` under an attack suite.

    For each attack spec (see :mod:`eatlib.attacks.spec`) the whole split (or a seeded random ``subset`` of it)
    is perturbed batch by batch, re-embedded, and clustered by a fresh seeded k-means, as a deployed system
    would; adversarial queries are also searched against the clean set (retrieval). The objective is prepared
    once on the clean embeddings of the attacked set. With ``surrogate`` the attacks are crafted on it
    (white-box on the surrogate, its own clean embeddings) and transferred to ``model``. Models are used in
    the mode the caller set (put them in eval mode). ``seed`` seeds the attacks and every k-means, and the subset
    unless ``subset_seed`` is given (the pipeline keeps the attacked images fixed across training seeds).
    ``noise`` (e.g. ``{"kmeans_seeds": 5, "bootstrap": 200}``) adds the evaluation noise of every score
    (:func:`eatlib.noise.evaluation_noise`: other k-means seeds, a bootstrap over test classes) as ``"noise"``
    of the first attack and of the worst attack of each metric, and as ``"clean_noise"``.
    ``amp`` (bf16 autocast when crafting, on CUDA or CPU; scores stay fp32) and ``channels_last`` (iterate
    layout; off for models that ``.view``
    feature maps) are execution settings of the attacks, see :class:`eatlib.attacks.Attack`. ``fold`` evaluates
    eval-mode models through a copy with BatchNorm folded into the convolutions (:func:`eatlib.models.fold_batchnorm`:
    the same network up to float rounding, attacked faster); the models passed in are not changed.

    Returns a JSON-ready dict::

        {"clean": {nmi, ami, ari, f1, purity, recall@1, ...},
         "attacks": {name: {nmi, ..., recall@1, ..., "perturbation": {"linf_max", "l2_mean"}, "spec": {...}}},
         "worst": {metric: min over the suite}, "worst_attack": {metric: name},
         "subset": {"size", "of", "seed"} or None, "seed", "model", "surrogate",
         "timing": {name: {"seconds", "images_per_second"}}}
    """
    specs = validate_suite([suite] if isinstance(suite, Mapping) else list(suite))
    if model.training or (surrogate is not None and surrogate.training):
        warnings.warn("evaluate_robustness: a model is in train mode (batch statistics); call .eval() first",
                      stacklevel=2)
    if fold:
        model = model if model.training else fold_batchnorm(model)
        surrogate = surrogate if surrogate is None or surrogate.training else fold_batchnorm(surrogate)
    device = torch.device(device) if device is not None else model_device(model)
    crafter = surrogate if surrogate is not None else model
    subset_seed = seed if subset_seed is None else subset_seed
    view = _View(dataset, subset_indices(len(dataset), subset, subset_seed))
    clean, labels = embed(model, view, batch_size=batch_size, device=device)
    crafter_clean = clean if surrogate is None else embed(crafter, view, batch_size=batch_size, device=device)[0]

    results = {
        "clean": embedding_scores(clean, labels, seed=seed),
        "attacks": {},
        "subset": None if subset is None or subset >= len(dataset) else
        {"size": len(view), "of": len(dataset), "seed": subset_seed},
        "seed": seed,
        "model": getattr(model, "config", None),
        "surrogate": None if surrogate is None else getattr(surrogate, "config", type(surrogate).__name__),
        "timing": {},
    }
    kept = {}  # adversarial embeddings, for the noise of the attacks that matter (below)
    if noise is not None:
        results["clean_noise"] = evaluation_noise(clean, labels, seed=seed, **noise)
    for spec in specs:
        attack = build_attack(spec, crafter, clean_embeddings=crafter_clean, labels=labels, seed=seed, amp=amp,
                              channels_last=channels_last)
        started = time.perf_counter()
        adversarial, perturbation = attack_embeddings(attack, view, target=model, batch_size=batch_size,
                                                      device=device, progress=progress, desc=spec["name"])
        seconds = time.perf_counter() - started
        scores = embedding_scores(adversarial, labels, seed=seed, clean=clean)
        results["attacks"][spec["name"]] = {**scores, "perturbation": perturbation, "spec": spec}
        if noise is not None:
            kept[spec["name"]] = adversarial
        results["timing"][spec["name"]] = {"seconds": seconds, "images_per_second": len(view) / seconds}
    results["worst"], results["worst_attack"] = worst_case(results["attacks"])
    # Noise only where the tables and the verdict read it: the first attack (the headline) and the worst ones.
    for name in {specs[0]["name"], *results["worst_attack"].values()} & set(kept):
        results["attacks"][name]["noise"] = evaluation_noise(kept[name], labels, seed=seed, **noise)
    return results


def evaluate_transfer(surrogate: nn.Module, target: nn.Module, dataset: Dataset, suite, **kwargs) -> dict:
    """Transfer attacks: craft on ``surrogate`` (white-box, its own clean embeddings), score ``target``.
    :func:`evaluate_robustness` with ``surrogate=``; the same keyword arguments."""
    return evaluate_robustness(target, dataset, suite, surrogate=surrogate, **kwargs)


def worst_case(attacks: dict) -> tuple[dict[str, float], dict[str, str]]:
    """Per metric, the minimum over the attacks (every score here is higher-is-better) and which attack."""
    metrics = [k for k, v in next(iter(attacks.values())).items() if isinstance(v, float)]
    worst, which = {}, {}
    for metric in metrics:
        name = min(attacks, key=lambda a: attacks[a][metric])
        worst[metric], which[metric] = attacks[name][metric], name
    return worst, which


def evaluate_eps_sweep(model: nn.Module, dataset: Dataset, spec=None, eps_values=None, **kwargs) -> dict:
    """:func:`evaluate_robustness` over copies of ``spec`` (default: the headline attack) at each eps (default
    1, 2, 4, 8, 16 /255); the step size keeps its ratio to eps."""
    return evaluate_robustness(model, dataset, eps_sweep(spec or HEADLINE, eps_values or SWEEP_EPS), **kwargs)


def smallest_eps(results: dict, *, metric: str = "ari", fraction: float = 0.5) -> float | None:
    """The smallest eps of a sweep's results at which ``metric`` falls to ``fraction`` of its clean value or
    below (docs/paper.md fixes the glyphs headline eps this way, with ARI halved); ``None`` if it never does."""
    threshold = fraction * results["clean"][metric]
    hits = [a["spec"]["eps"] for a in results["attacks"].values() if a[metric] <= threshold]
    return min(hits) if hits else None
