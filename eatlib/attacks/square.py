"""Square attack, L-inf (Andriushchenko et al., 2020): random search on the objective's values, no gradients.

A gradient-free attack exposes gradient masking: a defense whose gradients are useless (shattered, randomised,
vanishing) stops PGD and APGD but not random search, so Square beating the white-box attacks flags the defense
(:mod:`eatlib.sanity`).

Start: vertical stripes of ``+-eps`` (one random sign per column and channel). Each query then proposes, per
sample, a random square window (side ``s`` pixels) set to ``+-eps`` (one random sign per channel) around the
clean image, and keeps it where the objective rises. The window's area fraction ``p`` starts at ``p_init``
and halves on the paper's schedule (its 10 000-query breakpoints rescaled to ``queries``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eatlib.attacks.base import Attack
from eatlib.attacks.objectives import Objective

# The paper's schedule: at these fractions of a 10 000-query run the window area halves again.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_fraction(p_init: float, query: int, queries: int) -> float:
    """The window's area fraction at ``query`` (0-based) of a ``queries``-long run."""
    progress = int(query / queries * 10_000)
    return p_init / 2 ** sum(progress > h for h in _HALVINGS)


class Square(Attack):
    """Square attack in the L-inf ball: ``queries`` objective evaluations (forward passes, EOT-averaged with
    ``eot_samples``), the best iterate per sample kept. Uses the objective's values only."""

    norms = ("linf",)
    spec_keys = {"queries": (150, "int", None), "p_init": (0.8, "pos", None)}

    def __init__(self, model: nn.Module, objective: Objective, *, eps: float = 8 / 255, queries: int = 150,
                 p_init: float = 0.8, norm: str = "linf", **options):
        super().__init__(model, objective, eps=eps, norm=norm, **options)
        if int(queries) < 1:
            raise ValueError(f"queries must be >= 1, got {queries}")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.queries, self.p_init = int(queries), float(p_init)

    def _extra_repr(self):
        return ("queries", "p_init")

    def _signs(self, shape, gen, like):
        return torch.randint(0, 2, shape, generator=gen, device=like.device).to(like.dtype).mul_(2).sub_(1)

    def _perturb(self, images, objective):
        gen = self.generator(images.device)
        lower, upper = self.linf_box(images)
        n, c, h, w = images.shape
        stripes = self._signs((n, c, 1, w), gen, images)
        x = torch.clamp(images + self.eps * stripes, lower, upper)
        value = self.value(x, objective)
        rows = torch.arange(h, device=images.device)
        cols = torch.arange(w, device=images.device)
        for query in range(1, self.queries):
            p = window_fraction(self.p_init, query, self.queries)
            side = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1) if min(h, w) > 1 else 1
            top = torch.randint(0, h - side + 1, (n,), generator=gen, device=images.device)
            left = torch.randint(0, w - side + 1, (n,), generator=gen, device=images.device)
            in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)  # [n, h]
            in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)  # [n, w]
            window = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [n, 1, h, w]
            proposal = torch.clamp(images + self.eps * self._signs((n, c, 1, 1), gen, images), lower, upper)
            candidate = torch.where(window, proposal, x)
            candidate_value = self.value(candidate, objective)
            better = candidate_value > value
            x = torch.where(better.view(-1, 1, 1, 1), candidate, x)
            value = torch.where(better, candidate_value, value)
        return x
