"""The multi-target centroid attack: one run of an optimiser per target centre, the per-sample best kept.

Against a clustering, the boundary a small budget can cross is toward one of the few nearest other centres,
and which one is easiest differs per image: one targeted run toward each of the ``targets`` nearest centres
(:class:`eatlib.attacks.objectives.MultiTarget`), keeping per sample the run whose best targeted margin is
highest, is stronger than a single run toward the nearest (the targeted attacks of AutoAttack, with clusters).
Costs ``targets`` runs of the optimiser.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eatlib.attacks.base import Attack
from eatlib.attacks.objectives import MultiTarget, Objective


class MultiTargetAttack(Attack):
    """Runs ``make(objective_of_slot)`` (an attack) once per target slot of a prepared or later-prepared
    :class:`MultiTarget` objective; per sample keeps the result with the highest multi-target value."""

    def __init__(self, model, objective: MultiTarget, make: Callable[[Objective], Attack], **options):
        if not isinstance(objective, MultiTarget):
            raise TypeError(f"MultiTargetAttack needs a MultiTarget objective, got {type(objective).__name__}")
        super().__init__(model, objective, **options)
        self.make = make
        self._runs: list[Attack] | None = None

    def runs(self) -> list[Attack]:
        """One attack per target slot, built once the objective is prepared (each keeps its own generator)."""
        if self._runs is None:
            self._runs = [self.make(self.objective.for_target(slot)) for slot in range(self.objective.targets)]
        return self._runs

    def __call__(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        runs = self.runs()  # before anything else: an unprepared objective fails here, naming the fix
        best = runs[0](images, index)
        if self.eps == 0:
            return best
        objective = self.objective.batch(torch.as_tensor(index, device=images.device), images.device)
        best_value = self.value(best, objective)
        for run in runs[1:]:
            candidate = run(images, index)
            value = self.value(candidate, objective)
            better = value > best_value
            best[better] = candidate[better]
            best_value = torch.where(better, value, best_value)
        return best
