"""Attacks on clustering-based inference: one engine, pluggable objectives on embeddings.

An attack = objective + optimiser + budget. Build one from a spec (see :mod:`eatlib.attacks.spec`)::

    attack = build_attack(HEADLINE, model, clean_embeddings=clean, labels=labels, seed=0)
    adversarial = attack(images, index)

or from the classes directly (``PGD(model, Centroid("random").prepare(clean, labels), eps=8/255)``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from eatlib.attacks.apgd import APGD
from eatlib.attacks.base import NORMS, Attack
from eatlib.attacks.eot import expected_value, value_and_grad
from eatlib.attacks.multitarget import MultiTargetAttack
from eatlib.attacks.objectives import (
    OBJECTIVES,
    Centroid,
    DMLLoss,
    EmbeddingShift,
    Margin,
    MultiTarget,
    Objective,
    SoftAssignment,
    kmeans_centres,
)
from eatlib.attacks.optimizers import CW, FGSM, MIFGSM, OPTIMIZERS, PGD, UniformNoise
from eatlib.attacks.spec import (
    HEADLINE,
    SWEEP_EPS,
    SpecError,
    allowed_keys,
    eps_sweep,
    validate_spec,
    validate_suite,
)
from eatlib.attacks.square import Square

# Registered here, not in optimizers.py: these live in modules of their own (the registry is the same dict
# spec validation reads, so they validate like the rest).
OPTIMIZERS.update({"apgd": APGD, "square": Square})

__all__ = [
    "Attack", "CW", "FGSM", "MIFGSM", "PGD", "APGD", "Square", "UniformNoise", "MultiTargetAttack", "OPTIMIZERS",
    "NORMS", "Objective", "EmbeddingShift", "Centroid", "SoftAssignment", "DMLLoss", "Margin", "MultiTarget",
    "OBJECTIVES", "kmeans_centres",
    "HEADLINE", "SWEEP_EPS", "SpecError", "allowed_keys", "eps_sweep",
    "validate_spec", "validate_suite", "build_objective", "build_attack", "value_and_grad", "expected_value",
]


def build_objective(spec: Mapping, *, seed: int = 0) -> Objective:
    """The (unprepared) objective a spec names; ``seed`` seeds its k-means and random targets."""
    spec = validate_spec(spec)
    return OBJECTIVES[spec["objective"]].from_spec(spec, seed=seed)


def build_attack(
    spec: Mapping,
    model: nn.Module,
    *,
    clean_embeddings: torch.Tensor | None = None,
    labels=None,
    objective: Objective | None = None,
    seed: int = 0,
    amp: bool = False,
    channels_last: bool = True,
) -> Attack:
    """The attack a spec names, on ``model``.

    The objective is built from the spec and, when ``clean_embeddings [N, D]`` (and ``labels [N]``) of the whole
    attacked set are given, prepared on them; otherwise prepare ``attack.objective`` yourself before calling the
    attack. Pass ``objective=`` to use an objective object of your own (the spec's objective keys are then not
    used). ``seed`` seeds the random starts, the objective's k-means and its random targets. ``amp`` (bf16
    autocast of the model when crafting, CUDA or CPU) and ``channels_last`` (iterate layout) are execution
    settings, not part of the spec; see :class:`Attack`. A :class:`MultiTarget` objective runs the optimiser
    once per target (:class:`MultiTargetAttack`).
    """
    spec = validate_spec(spec)
    if objective is None:
        objective = build_objective(spec, seed=seed)
    if clean_embeddings is not None:
        objective.prepare(clean_embeddings, labels)
    common = {"eps": spec["eps"], "norm": spec["norm"], "restarts": spec["restarts"], "eot_samples": spec["eot"],
              "seed": seed, "amp": amp, "channels_last": channels_last}
    optimizer = OPTIMIZERS[spec["optimizer"]]
    if isinstance(objective, MultiTarget):
        # One run per target slot, each with its own seed so the random starts differ between runs.
        counter = iter(range(objective.targets))

        def make(slot_objective: Objective) -> Attack:
            return optimizer.from_spec(model, slot_objective, spec, **{**common, "seed": seed + next(counter)})

        return MultiTargetAttack(model, objective, make, **common)
    return optimizer.from_spec(model, objective, spec, **common)
