"""Inference-time defenses: ``nn.Module`` wrappers around a trained model with the same forward contract
(``x [B,3,S,S]`` in [0,1] -> L2-normalised ``[B, D]``), built by name with
:func:`eatlib.defenses.build_inference`.

Attacks must see through them honestly:
- Non-differentiable steps (bit-depth rounding, JPEG) pass gradients straight through (BPDA with the identity,
  Athalye et al., 2018): the forward value is the real transform, the backward pass treats it as ``x -> x``.
- Randomised wrappers set ``randomized = True``: their robustness must be measured with EOT (the engine's
  ``eot_samples``), which averages gradients over the random draws. Their draws come from their own generator,
  seeded by the options' ``seed``, so a run is reproducible.
"""

from __future__ import annotations

import torch
from torch import nn

from eatlib.params import to_dict


class InferenceDefense(nn.Module):
    """Base: ``forward(x) = model(transform(x))``. Subclasses implement :meth:`transform`."""

    defense_name = "inference_defense"
    randomized = False

    def __init__(self, model: nn.Module, options):
        super().__init__()
        self.model, self.options = model, options
        self._generators: dict[str, torch.Generator] = {}

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    @property
    def config(self) -> dict:
        """The wrapped model's config plus the defense (plain data, for results JSON)."""
        return {"inference_defense": self.defense_name, "options": to_dict(self.options),
                "model": getattr(self.model, "config", None)}

    def generator(self, device: torch.device) -> torch.Generator:
        """This wrapper's random generator on ``device`` (seeded once from ``options.seed``)."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.options.seed)
        return self._generators[key]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


def straight_through(x: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
    """The value of ``transformed`` with the gradient of the identity (BPDA): ``x + (transformed - x).detach()``."""
    return x + (transformed - x).detach()


def uniform(low: float, high: float, generator: torch.Generator, shape=()) -> torch.Tensor:
    """Uniform draws in ``[low, high)`` from ``generator`` (on its device)."""
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)
