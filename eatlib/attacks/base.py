"""The attack engine: an attack = an objective on embeddings + an optimiser + a budget.

Used like torchattacks, with a pluggable objective instead of a fixed cross-entropy::

    objective = Centroid(target="nearest").prepare(clean_embeddings, labels)   # once, on the whole set
    attack = PGD(model, objective, eps=8/255, alpha=2/255, steps=20)
    adversarial = attack(images, index)   # images [B,3,S,S] in [0,1]; index [B]: their positions in the set

The engine never touches the model's train/eval mode or its parameters (gradients are taken with respect to the
input only). Put the model in eval mode first, as for any evaluation; a model left in train mode attacks through
batch statistics and updates its BatchNorm running averages, which is the caller's choice (adversarial training).
"""

from __future__ import annotations

import torch
from torch import nn

from eatlib.attacks.eot import expected_value, value_and_grad
from eatlib.attacks.objectives import BatchObjective, Objective

NORMS = ("linf", "l2")


class Attack:
    """Base class: input checks, the seeded generator, restarts and the budget helpers.

    Subclasses implement :meth:`_perturb` (one run from one start) and list the norms they support.
    ``restarts`` runs the optimiser that many times from fresh random starts and keeps, per sample, the
    perturbation with the best objective. ``eot_samples`` averages values and gradients over that many passes
    of a randomised model. ``seed`` seeds the random starts (one generator per attack, so a sequence of
    batches is reproducible). ``amp`` runs the model's forward and backward under bf16 autocast, on CUDA
    or on CPU (about twice the speed on recent GPUs and 1.9x for ResNet-18 on this AVX-512 BF16 CPU; sign steps
    barely notice bf16 gradients); only the crafting: :meth:`value` too, so restarts pick their best under bf16,
    but the caller scores the returned images in float32 (``eatlib.attacks.eot.forward_embeddings``).
    ``channels_last`` keeps the iterates in channels-last memory layout, which the convolutions run faster on
    (measured here on CPU: cnn4 and MobileNetV2 1.3-1.5x, ResNet-18 1.1x; benchmarks/attack_speed.py); the model
    is not touched and the result comes back in the input's layout. A model that flattens spatial feature maps
    with ``.view`` cannot take channels-last inputs: pass ``channels_last=False`` for it.
    """

    norms: tuple[str, ...] = NORMS
    # The spec keys of this optimiser (eatlib.attacks.spec): key -> (default, kind, allowed values or None).
    spec_keys: dict[str, tuple] = {}

    @classmethod
    def from_spec(cls, model: nn.Module, objective: Objective, spec: dict, **common) -> Attack:
        """The attack a validated spec names; its own keys are constructor arguments of the same names."""
        return cls(model, objective, **{key: spec[key] for key in cls.spec_keys}, **common)

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        *,
        eps: float,
        norm: str = "linf",
        restarts: int = 1,
        eot_samples: int = 1,
        seed: int = 0,
        amp: bool = False,
        channels_last: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be an eatlib.attacks Objective, got {type(objective).__name__}")
        if norm not in self.norms:
            raise ValueError(f"{type(self).__name__} supports norm in {self.norms}, got {norm!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if int(restarts) < 1 or int(eot_samples) < 1:
            raise ValueError(f"restarts and eot_samples must be >= 1, got {restarts} and {eot_samples}")
        self.model, self.objective = model, objective
        self.eps, self.norm = float(eps), norm
        self.restarts, self.eot_samples, self.seed = int(restarts), int(eot_samples), int(seed)
        self.amp, self.channels_last = bool(amp), bool(channels_last)
        self._generator: torch.Generator | None = None

    def __call__(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Adversarial versions ``[B, C, H, W]`` in [0,1], within the budget, of ``images [B, C, H, W]`` in
        [0,1], which sit at positions ``index [B]`` of the set the objective was prepared on."""
        if not (isinstance(images, torch.Tensor) and images.is_floating_point() and images.ndim == 4):
            raise ValueError("images must be a float tensor [B, C, H, W] in [0,1]")
        if float(images.min()) < 0 or float(images.max()) > 1:
            raise ValueError("images must lie in [0,1] pixel space (the model normalises internally)")
        index = torch.as_tensor(index, dtype=torch.long, device=images.device)
        if index.shape != (len(images),):
            raise ValueError(f"index must have shape [{len(images)}] (a position per image), got {tuple(index.shape)}")
        objective = self.objective.batch(index, images.device)
        if self.eps == 0:
            return images.detach().clone()
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        best = self._run(images.detach().contiguous(memory_format=layout), objective)
        return best if best.is_contiguous() or not images.is_contiguous() else best.contiguous()

    def _run(self, images: torch.Tensor, objective: BatchObjective) -> torch.Tensor:
        """Restarts around :meth:`_perturb`: per sample, the run with the best objective."""
        best = self._perturb(images, objective)
        if self.restarts == 1:
            return best
        best_value = self.value(best, objective)
        for _ in range(self.restarts - 1):
            candidate = self._perturb(images, objective)
            value = self.value(candidate, objective)
            better = value > best_value
            best[better] = candidate[better]
            best_value = torch.where(better, value, best_value)
        return best

    def _perturb(self, images: torch.Tensor, objective: BatchObjective) -> torch.Tensor:
        raise NotImplementedError

    def value(self, images: torch.Tensor, objective: BatchObjective) -> torch.Tensor:
        """The objective ``[B]`` at ``images`` (EOT-averaged)."""
        return expected_value(self.model, objective, images, samples=self.eot_samples, amp=self.amp)

    def value_and_grad(self, images: torch.Tensor, objective: BatchObjective):
        """Objective ``[B]`` and its input gradient at ``images`` (EOT-averaged)."""
        return value_and_grad(self.model, objective, images, samples=self.eot_samples, amp=self.amp)

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator

    def random_point(self, images: torch.Tensor) -> torch.Tensor:
        """A uniform draw from the budget ball around ``images``, clipped to [0,1]."""
        gen = self.generator(images.device)
        if self.norm == "linf":
            noise = torch.rand(images.shape, generator=gen, device=images.device, dtype=images.dtype)
            delta = noise.mul_(2 * self.eps).sub_(self.eps)
        else:
            # Uniform in the L2 ball: a uniform direction, radius eps * U^(1/n).
            direction = torch.randn(images.shape, generator=gen, device=images.device, dtype=images.dtype)
            direction = direction / flat_norm(direction).clamp_min(1e-12)
            n = images[0].numel()
            radius = torch.rand(len(images), generator=gen, device=images.device, dtype=images.dtype) ** (1 / n)
            delta = direction * (self.eps * radius).view(-1, *([1] * (images.ndim - 1)))
        # Into a tensor laid out like ``images`` (channels-last iterates stay channels-last).
        return torch.add(images, delta, out=torch.empty_like(images)).clamp_(0, 1)

    def project(self, adversarial: torch.Tensor, images: torch.Tensor, box=None) -> torch.Tensor:
        """Back into the budget ball around ``images`` and into [0,1], in place. ``box`` is the precomputed
        L-inf box ``(lower, upper)``."""
        if self.norm == "linf":
            lower, upper = box if box is not None else self.linf_box(images)
            return torch.clamp(adversarial, lower, upper, out=adversarial)
        delta = adversarial.sub_(images)
        scale = (self.eps / flat_norm(delta).clamp_min(1e-12)).clamp_(max=1.0)
        return delta.mul_(scale).add_(images).clamp_(0, 1)

    def linf_box(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel bounds of the L-inf ball intersected with [0,1]: one clamp per step instead of four ops."""
        return (images - self.eps).clamp_(min=0), (images + self.eps).clamp_(max=1)

    def __repr__(self):
        keys = ("eps", "norm", "restarts", "eot_samples", "seed", *self._extra_repr())
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)}, {self.objective!r})"

    def _extra_repr(self) -> tuple[str, ...]:
        return ()


def flat_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm ``[B, 1, 1, 1]`` of ``x [B, ...]``."""
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))
