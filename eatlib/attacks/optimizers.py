"""The optimisers: FGSM, PGD (L-inf and L2), MI-FGSM, C&W-L2, and uniform noise as the no-gradient baseline.

Each maximises a prepared objective (see :mod:`eatlib.attacks.objectives`) over the budget; see
:class:`eatlib.attacks.base.Attack` for the call convention and the options every optimiser takes
(``restarts``, ``eot_samples``, ``seed``, ``amp``, ``channels_last``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eatlib.attacks.base import Attack, flat_norm
from eatlib.attacks.eot import forward_embeddings
from eatlib.attacks.objectives import BatchObjective, Objective


def _unit_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign for L-inf, normalised gradient for L2."""
    if norm == "linf":
        return grad.sign_()
    return grad.div_(flat_norm(grad).clamp_min(1e-12))


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al., 2015): one step of size ``eps`` (the fast gradient method
    for ``norm="l2"``); ``random_start`` steps from a uniform random point of the ball instead (Wong et al., 2020)."""

    spec_keys = {"random_start": (False, "bool", None)}

    def __init__(self, model: nn.Module, objective: Objective, *, eps: float = 8 / 255, norm: str = "linf",
                 random_start: bool = False, **options):
        super().__init__(model, objective, eps=eps, norm=norm, **options)
        self.random_start = bool(random_start)

    def _perturb(self, images, objective):
        start = self.random_point(images) if self.random_start else images
        _, grad = self.value_and_grad(start, objective)
        return self.project(start.add(_unit_step(grad, self.norm), alpha=self.eps), images)


class PGD(Attack):
    """Projected gradient ascent (Madry et al., 2018): ``steps`` steps of size ``alpha`` (sign steps for
    L-inf, normalised-gradient steps for L2), each projected back into the eps-ball and [0,1], from a uniform
    random point of the ball when ``random_start``. ``alpha`` defaults to ``eps / 4``."""

    spec_keys = {"alpha": (None, "pos", None), "steps": (20, "int", None), "random_start": (True, "bool", None)}

    def __init__(self, model: nn.Module, objective: Objective, *, eps: float = 8 / 255, alpha: float | None = None,
                 steps: int = 20, norm: str = "linf", random_start: bool = True, **options):
        super().__init__(model, objective, eps=eps, norm=norm, **options)
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.alpha = float(alpha) if alpha is not None else self.eps / 4
        if not (self.alpha > 0 or self.eps == 0 and self.alpha == 0):
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.steps, self.random_start = int(steps), bool(random_start)

    def _extra_repr(self):
        return ("alpha", "steps")

    def _perturb(self, images, objective):
        box = self.linf_box(images) if self.norm == "linf" else None
        adversarial = self.random_point(images) if self.random_start else images.clone()
        for _ in range(self.steps):
            _, grad = self.value_and_grad(adversarial, objective)
            adversarial = self.project(adversarial.add_(_unit_step(grad, self.norm), alpha=self.alpha), images, box)
        return adversarial


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al., 2018): the gradient, L1-normalised per sample, accumulates in a
    momentum with factor ``decay``; sign steps of ``alpha`` (default ``eps / steps``) in the L-inf ball."""

    norms = ("linf",)
    spec_keys = {"alpha": (None, "pos", None), "steps": (10, "int", None), "decay": (1.0, "nonneg", None),
                 "random_start": (False, "bool", None)}

    def __init__(self, model: nn.Module, objective: Objective, *, eps: float = 8 / 255, alpha: float | None = None,
                 steps: int = 10, decay: float = 1.0, norm: str = "linf", random_start: bool = False, **options):
        super().__init__(model, objective, eps=eps, norm=norm, **options)
        if int(steps) < 1 or not decay >= 0:
            raise ValueError(f"steps must be >= 1 and decay >= 0, got {steps} and {decay}")
        self.steps, self.decay, self.random_start = int(steps), float(decay), bool(random_start)
        self.alpha = float(alpha) if alpha is not None else self.eps / self.steps

    def _extra_repr(self):
        return ("alpha", "steps", "decay")

    def _perturb(self, images, objective):
        box = self.linf_box(images)
        adversarial = self.random_point(images) if self.random_start else images.clone()
        momentum = torch.zeros_like(images)
        for _ in range(self.steps):
            _, grad = self.value_and_grad(adversarial, objective)
            grad = grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            momentum.mul_(self.decay).add_(grad)
            adversarial = self.project(adversarial.add_(momentum.sign(), alpha=self.alpha), images, box)
        return adversarial


class CW(Attack):
    """Carlini-Wagner L2 (2017), with the objective in place of the logit margin.

    Minimises ``|delta|_2^2 - c * min(value, kappa)`` over ``w`` with ``x = (tanh(w) + 1) / 2`` (so x stays in
    [0,1]) by Adam with learning rate ``lr`` for ``steps`` steps. Keeps, per sample, the iterate with the best
    ``c * min(value, kappa) - |delta|^2`` among those inside the L2 ball of radius ``eps`` (``eps=None``: no
    hard budget); the clean image is the fallback, so the output is always within budget.
    """

    norms = ("l2",)
    spec_keys = {"c": (1.0, "pos", None), "kappa": (None, "kappa", None), "steps": (50, "int", None),
                 "lr": (0.01, "pos", None)}

    @classmethod
    def from_spec(cls, model, objective, spec, **common):
        kappa = float("inf") if spec["kappa"] is None else spec["kappa"]  # a spec's null: no cap
        return cls(model, objective, c=spec["c"], kappa=kappa, steps=spec["steps"], lr=spec["lr"], **common)

    def __init__(self, model: nn.Module, objective: Objective, *, eps: float | None = None, c: float = 1.0,
                 kappa: float = float("inf"), steps: int = 50, lr: float = 0.01, norm: str = "l2", **options):
        super().__init__(model, objective, eps=float("inf") if eps is None else eps, norm=norm, **options)
        if int(steps) < 1 or not c > 0 or not lr > 0:
            raise ValueError(f"steps must be >= 1, c > 0 and lr > 0; got {steps}, {c}, {lr}")
        self.c, self.kappa, self.steps, self.lr = float(c), float(kappa), int(steps), float(lr)

    def _extra_repr(self):
        return ("c", "kappa", "steps", "lr")

    def _perturb(self, images, objective):
        w = torch.atanh(images.mul(2).sub_(1).clamp_(-1 + 1e-6, 1 - 1e-6)).requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=self.lr)
        best = images.clone()
        best_score = torch.full((len(images),), -math.inf, device=images.device, dtype=images.dtype)
        for _ in range(self.steps):
            with torch.enable_grad():
                adversarial = (torch.tanh(w) + 1) / 2
                passes = range(self.eot_samples)
                value = sum(objective(forward_embeddings(self.model, adversarial, self.amp)) for _ in passes)
                value = value / self.eot_samples
                sq_dist = (adversarial - images).flatten(1).pow(2).sum(1)
                score = self.c * value.clamp(max=self.kappa) - sq_dist
                (w.grad,) = torch.autograd.grad(-score.sum(), w)
            optimizer.step()
            with torch.no_grad():
                keep = (score > best_score) & (sq_dist <= self.eps**2)
                best[keep] = adversarial[keep].detach()
                best_score = torch.where(keep, score.detach(), best_score)
        return best


class UniformNoise(Attack):
    """No gradient: a uniform draw from the budget ball (the control that separates an attack from noise)."""

    def __init__(self, model: nn.Module, objective: Objective, *, eps: float = 8 / 255, norm: str = "linf",
                 **options):
        super().__init__(model, objective, eps=eps, norm=norm, **options)

    def _perturb(self, images: torch.Tensor, objective: BatchObjective) -> torch.Tensor:
        return self.random_point(images)


OPTIMIZERS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD, "mifgsm": MIFGSM, "cw": CW, "noise": UniformNoise}
