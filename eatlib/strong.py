"""The strong protocol (``attacks.protocol: strong``): an AutoAttack-style ensemble against clustering.

Every attack of the ensemble (white-box APGD and multi-target runs, gradient-free Square, transfer attacks
crafted on other models) perturbs every image; per image the adversarial version that maximises the k-means
margin on the ATTACKED model (:class:`eatlib.attacks.Margin`: distance to its own clean centre minus distance
to the nearest other one) is kept, and the kept set is clustered once. The reported robust scores are those of
that combined set, a per-image worst case no single attack reaches; each attack's own scores stay beside them.

Streams over batches: memory stays at one batch of images plus one embedding per image and attack.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from eatlib.attacks import Margin, build_attack, expected_value, validate_spec
from eatlib.evaluate import _View, embed, embedding_scores, model_device, subset_indices, worst_case
from eatlib.models import fold_batchnorm
from eatlib.noise import evaluation_noise
from eatlib.params import ConfigError

# A forward pass costs about a third of a forward-backward one (the unit of the budget).
FORWARD_COST = 1 / 3

# The default ensemble (params.yaml attacks.strong): ~105 forward-backward passes per image with the per-image
# selection, as the standard suite's five PGD-20 and one FGSM (101). All L-inf 8/255: the combined set must
# be one threat model.
STRONG = (
    {"name": "apgd_multi_target", "optimizer": "apgd", "eps": 8 / 255, "steps": 14, "objective": "multi_target",
     "targets": 3},
    {"name": "apgd_centroid_random", "optimizer": "apgd", "eps": 8 / 255, "steps": 20, "objective": "centroid",
     "target": "random"},
    {"name": "square_margin", "optimizer": "square", "eps": 8 / 255, "queries": 75, "objective": "margin"},
    {"name": "transfer_standard", "optimizer": "pgd", "eps": 8 / 255, "alpha": 2 / 255, "steps": 10,
     "objective": "margin", "source": "standard"},
    {"name": "transfer_pgd_at", "optimizer": "pgd", "eps": 8 / 255, "alpha": 2 / 255, "steps": 10,
     "objective": "margin", "source": "pgd_at"},
)


def validate_strong(specs: Iterable[Mapping]) -> list[tuple[dict, str | None]]:
    """Validated ``(spec, source)`` pairs of a strong ensemble. ``source`` (optional, popped before the spec is
    validated) names a transfer source: the attack is crafted on that model and scored on the attacked one."""
    out, names = [], []
    for raw in specs:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a strong-protocol entry must be a spec dict, got {type(raw).__name__}")
        raw = dict(raw)
        source = raw.pop("source", None)
        if source is not None and (not isinstance(source, str) or not source):
            raise ConfigError(f"key 'source' must be the name of a transfer source (a string), got {source!r}")
        spec = validate_spec(raw)
        out.append((spec, source))
        names.append(spec["name"])
    if not out:
        raise ConfigError("the strong protocol needs at least one attack spec")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"attack names must be unique within attacks.strong; repeated: {repeated} (set 'name')")
    return out


def spec_passes(spec: Mapping, eot: int | None = None) -> float:
    """Estimated forward-backward passes per image of one validated spec (forward-only queries at
    :data:`FORWARD_COST`); ``eot`` overrides the spec's EOT samples."""
    eot = spec["eot"] if eot is None else eot
    optimizer = spec["optimizer"]
    runs = spec["restarts"] * spec.get("targets", 1)
    if optimizer in ("pgd", "apgd", "mifgsm", "cw"):
        return float(runs * spec["steps"] * eot)
    if optimizer == "fgsm":
        return float(runs * eot)
    if optimizer == "square":
        return float(runs * spec["queries"] * eot * FORWARD_COST)
    return 0.0  # noise


def evaluate_strong(
    model: nn.Module,
    dataset: Dataset,
    specs: Iterable[Mapping],
    *,
    transfer_sources: Mapping[str, nn.Module | None] | None = None,
    seed: int = 0,
    subset: int | None = None,
    subset_seed: int | None = None,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    progress: bool = True,
    eot_samples: int = 1,
    amp: bool = False,
    channels_last: bool = True,
    fold: bool = True,
    noise: Mapping | None = None,
    per_image: bool = False,
) -> dict:
    """Scores of ``model`` on ``dataset`` under the strong protocol over ``specs`` (see the module docstring).

    ``specs``: attack spec dicts (:mod:`eatlib.attacks.spec`), each optionally with ``source: NAME``, a key
    of ``transfer_sources`` (name -> model; ``None`` skips that attack, e.g. the standard model as its own
    source): crafted white-box on the source against its own clean embeddings, then scored on ``model``.
    White-box specs against a randomised model (``model.randomized``) get ``eot_samples`` EOT samples, and
    the per-image selection then ranks by the EOT-averaged margin. ``seed`` seeds the attacks and every
    k-means, and the subset unless ``subset_seed`` is given. ``amp``, ``channels_last``, ``fold`` and ``noise``
    (adds ``"noise"`` to the combined set and each attack, and ``"clean_noise"``): as in
    :func:`eatlib.evaluate.evaluate_robustness`.
    ``per_image`` adds each image's selection margin per attack and combined (lists, for checks).

    Returns a JSON-ready dict::

        {"clean": scores, "combined": {scores..., "perturbation", "margin", "wins": {name: images}},
         "attacks": {name: {scores..., "perturbation", "margin", "spec", "source"}},
         "worst": {metric: min over combined and singles}, "worst_attack": {metric: name},
         "skipped": [names], "subset", "seed", "randomized",
         "timing": {name: {"seconds", "images_per_second"}, "total": seconds},
         "hyperparameters": {"specs": [...], "eot_samples", "selection", "passes_per_image": {name: n, "total"}}}

    ``margin``: ``{"mean", "fooled"}``, the mean selection margin and the fraction of images it puts in another
    clean cluster; ``perturbation``: ``{"linf_max", "l2_mean"}`` of the images kept.
    """
    entries = validate_strong(specs)
    sources = dict(transfer_sources or {})
    missing = sorted({s for _, s in entries if s is not None and s not in sources})
    if missing:
        raise ConfigError(f"attacks.strong names transfer source(s) {missing}, but transfer_sources has "
                          f"{sorted(sources)}; pass those models (or None to skip them)")
    if int(eot_samples) < 1:
        raise ValueError(f"eot_samples must be >= 1, got {eot_samples}")
    if model.training:
        warnings.warn("evaluate_strong: the model is in train mode (batch statistics); call .eval() first",
                      stacklevel=2)
    randomized = bool(getattr(model, "randomized", False))
    select_samples = int(eot_samples) if randomized else 1
    if fold:
        model = model if model.training else fold_batchnorm(model)
    device = torch.device(device) if device is not None else model_device(model)
    subset_seed = seed if subset_seed is None else subset_seed
    view = _View(dataset, subset_indices(len(dataset), subset, subset_seed))
    clean, labels = embed(model, view, batch_size=batch_size, device=device)
    selector = Margin(seed=seed).prepare(clean, labels)

    attacks, skipped, recorded, passes = {}, [], [], {}
    crafter_clean: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    for spec, source in entries:
        recorded.append({**spec, "source": source})
        if source is None:
            crafter, crafter_embeddings = model, clean
            if randomized and spec["eot"] == 1:
                spec = {**spec, "eot": int(eot_samples)}
        else:
            if sources[source] is None:
                skipped.append(spec["name"])
                continue
            if source not in crafter_clean:
                surrogate = sources[source]
                surrogate = surrogate if not fold or surrogate.training else fold_batchnorm(surrogate)
                crafter_clean[source] = surrogate, embed(surrogate, view, batch_size=batch_size)[0]
            crafter, crafter_embeddings = crafter_clean[source]
        attacks[spec["name"]] = (
            build_attack(spec, crafter, clean_embeddings=crafter_embeddings, labels=labels, seed=seed, amp=amp,
                         channels_last=channels_last),
            spec, source,
        )
        passes[spec["name"]] = spec_passes(spec) + select_samples * FORWARD_COST
    if not attacks:
        raise ConfigError("every attack of attacks.strong was skipped (all their transfer sources are None)")

    n = len(view)
    embeddings = {name: torch.empty(n, clean.shape[1]) for name in attacks}
    margins = {name: torch.empty(n) for name in attacks}
    linf = {name: torch.empty(n) for name in attacks}
    l2 = {name: torch.empty(n) for name in attacks}
    seconds = dict.fromkeys(attacks, 0.0)
    started = time.perf_counter()
    n_batches = -(-n // batch_size)
    for images, index in tqdm(view.batches(batch_size, device), total=n_batches, desc="strong",
                              disable=not progress, leave=False):
        rows = index.cpu()
        selection = selector.batch(index, device)
        for name, (attack, _, _) in attacks.items():
            tic = time.perf_counter()
            crafter_device = model_device(attack.model)
            adversarial = attack(images.to(crafter_device), index.to(crafter_device)).to(device)
            with torch.no_grad():
                embedding = model(adversarial).float()
                if select_samples == 1:
                    margin = selection(embedding)
                else:
                    margin = expected_value(model, selection, adversarial, samples=select_samples)
            delta = (adversarial - images).flatten(1)
            embeddings[name][rows] = embedding.cpu()
            margins[name][rows] = margin.float().cpu()
            linf[name][rows] = delta.abs().amax(1).float().cpu()
            l2[name][rows] = delta.norm(dim=1).float().cpu()
            seconds[name] += time.perf_counter() - tic

    # Per image, the attack with the largest margin on the attacked model (first listed wins ties).
    names = list(attacks)
    stacked = torch.stack([margins[name] for name in names])  # [A, N]
    best_margin, winner = stacked.max(0)
    rows = torch.arange(n)
    combined_embeddings = torch.stack([embeddings[name] for name in names])[winner, rows]
    combined_linf = torch.stack([linf[name] for name in names])[winner, rows]
    combined_l2 = torch.stack([l2[name] for name in names])[winner, rows]

    results = {
        "clean": embedding_scores(clean, labels, seed=seed),
        "combined": {
            **embedding_scores(combined_embeddings, labels, seed=seed, clean=clean),
            "perturbation": _perturbation(combined_linf, combined_l2),
            "margin": _margin_summary(best_margin),
            "wins": {name: int((winner == i).sum()) for i, name in enumerate(names)},
        },
        "attacks": {},
        "skipped": skipped,
        "subset": None if subset is None or subset >= len(dataset) else
        {"size": n, "of": len(dataset), "seed": subset_seed},
        "seed": seed,
        "randomized": randomized,
        "timing": {name: {"seconds": s, "images_per_second": n / s if s > 0 else math.inf}
                   for name, s in seconds.items()},
        "hyperparameters": {
            "specs": recorded,
            "eot_samples": select_samples,
            "selection": "per image, the attack maximising the k-means margin on the attacked model "
                         "(own clean centre distance minus nearest other; centres of its clean embeddings)",
            "passes_per_image": {**passes, "total": sum(passes.values())},
        },
    }
    for name, (_, spec, source) in attacks.items():
        results["attacks"][name] = {
            **embedding_scores(embeddings[name], labels, seed=seed, clean=clean),
            "perturbation": _perturbation(linf[name], l2[name]),
            "margin": _margin_summary(margins[name]),
            "spec": spec,
            "source": source,
        }
    if noise is not None:
        results["clean_noise"] = evaluation_noise(clean, labels, seed=seed, **noise)
        results["combined"]["noise"] = evaluation_noise(combined_embeddings, labels, seed=seed, **noise)
        for name in attacks:
            results["attacks"][name]["noise"] = evaluation_noise(embeddings[name], labels, seed=seed, **noise)
    results["timing"]["total"] = time.perf_counter() - started
    results["worst"], results["worst_attack"] = worst_case({"combined": results["combined"], **results["attacks"]})
    if per_image:
        results["per_image"] = {"combined": best_margin.tolist(), **{k: v.tolist() for k, v in margins.items()}}
    return results


def _perturbation(linf: torch.Tensor, l2: torch.Tensor) -> dict[str, float]:
    return {"linf_max": float(linf.max()), "l2_mean": float(l2.mean())}


def _margin_summary(margin: torch.Tensor) -> dict[str, float]:
    return {"mean": float(margin.mean()), "fooled": float((margin > 0).float().mean())}
