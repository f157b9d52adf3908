"""The inner maximisation of every adversarial defense, through the attack engine (:mod:`eatlib.attacks`).

- :class:`AttackOptions`: the budget and the PGD settings of a defense, with an eps warm-up.
- :class:`TrainingLoss`: an engine objective bound to ONE training batch (the training loss with the batch's
  labels), not prepared once on a fixed set like the evaluation objectives.
- :class:`Adversary`: builds the engine's PGD for each batch (eps ramped by the epoch, a fresh seed from the
  trainer's per-epoch torch seed, so resumed runs replay exactly) and runs it with the model in eval mode.
- :class:`MemberStack`: the members of an ensemble side by side, ``[B, M, D]``, to attack them jointly.

Why eval mode: in train mode every attack step would push a batch of adversarial images into the BatchNorm
running averages (``steps`` extra updates per batch) and normalise with batch statistics; crafting in eval mode
(as TRADES' reference code does) leaves the statistics to the training forward pass. In eval mode a BatchNorm is
a fixed affine map, so ``Adversary.fold`` may craft against a BatchNorm-folded copy, refreshed for each batch (the
same function up to float rounding, fewer passes over memory: benchmarks/engine.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from eatlib.attacks import PGD, Objective
from eatlib.defenses.registry import require
from eatlib.models import RefreshedFold

NORMS = ("linf", "l2")


@dataclass(frozen=True)
class AttackOptions:
    """PGD inner maximisation (Madry et al.): ``steps`` steps of ``step_size`` inside the ``norm`` ball of
    radius ``eps`` (pixel units, e.g. ``8/255``), from a random start.

    ``warmup_epochs = k`` ramps eps (and the step size with it) linearly over the first k epochs: epoch e
    (0-based) uses ``eps * min(1, (e + 1) / (k + 1))``. Adversarial metric learning converges slowly and can
    collapse from a cold start at full eps; the ramp needs the trainer to call ``step.set_epoch(epoch)``.
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 5
    norm: str = "linf"
    random_start: bool = True
    warmup_epochs: int = 4

    def __post_init__(self):
        require(self.eps >= 0, "eps", self.eps, "a number >= 0, e.g. 8/255")
        require(self.step_size > 0, "step_size", self.step_size, "a number > 0, e.g. 2/255")
        require(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        require(self.norm in NORMS, "norm", self.norm, str(NORMS))
        require(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "an integer >= 0")

    def ramp(self, epoch: int) -> float:
        """The fraction of eps used in (0-based) ``epoch``."""
        return min(1.0, (epoch + 1) / (self.warmup_epochs + 1))


class TrainingLoss(Objective):
    """Engine objective: the training loss of one batch, to maximise.

    ``loss(embeddings, labels) -> scalar`` is any metric loss (its proxies stay fixed: the engine differentiates
    with respect to the input only). Bound to ``labels [B]`` at construction; ``attack(images, index)`` takes
    positions into that batch. Metric losses couple the samples of a batch, so each sample's value is the batch
    loss divided by the batch size (their sum, which the gradient follows, is the batch loss).
    """

    name = "training_loss"

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], labels: torch.Tensor):
        super().__init__()
        self.loss = loss
        self._state = {"labels": labels.detach()}

    @property
    def size(self) -> int:
        return len(self._state["labels"])

    def prepare(self, clean_embeddings, labels=None):
        raise TypeError("TrainingLoss is bound to one batch's labels at construction; there is nothing to prepare")

    def _bind(self, state, index):
        labels = state["labels"][index]
        return lambda z: self.loss(z, labels).expand(len(z)) / len(z)


class MemberStack(nn.Module):
    """The members of an ensemble side by side: ``forward(x [B,3,S,S]) -> [B, M, D]`` (each member's own
    L2-normalised embedding). A view for attacking all members at once; it owns no parameters of its own."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members], dim=1)


class MemberLosses(nn.Module):
    """``loss(z [B, M, D], labels [B]) -> scalar``: the sum over members of each member's own loss (own proxies)
    on its own embeddings; the training loss of the whole ensemble, for attacks crafted against all of it."""

    def __init__(self, criteria: Sequence[nn.Module]):
        super().__init__()
        self.criteria = nn.ModuleList(criteria)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(criterion(z[:, m], labels) for m, criterion in enumerate(self.criteria))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside the block; each one's own flag restored afterwards (the trainer may
    keep some BatchNorm layers frozen in eval mode while the rest trains)."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


class Adversary:
    """Crafts adversarial training examples with the engine's PGD, eps ramped by the epoch.

    ``adversary(model, objective, images) -> adversarial images`` (same shape, in [0,1], inside the ball).
    Build one per step object; the trainer calls ``set_epoch`` (forwarded by the step) before each epoch.
    ``amp`` crafts under bf16 autocast (CUDA, or CPU with AVX-512 BF16: :class:`eatlib.attacks.Attack`); the
    examples are then float32 images like any others and the training step that uses them is unchanged.
    ``fold`` crafts against a copy of the model with its BatchNorms folded into the convolutions, traced once
    and refreshed from the current weights for every batch (:class:`eatlib.models.RefreshedFold`): the same
    network up to float rounding, so the examples differ from unfolded crafting only where a gradient's sign is
    within rounding of zero.
    """

    def __init__(self, options: AttackOptions, *, amp: bool = False, fold: bool = False):
        self.options = options
        self.amp = bool(amp)
        self.fold = bool(fold)
        self.epoch: int | None = None
        self._folded: dict[int, RefreshedFold] = {}  # by id of the network crafted against

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def eps(self) -> tuple[float, float]:
        """``(eps, step_size)`` of the current epoch."""
        options = self.options
        if options.warmup_epochs == 0:
            return options.eps, options.step_size
        if self.epoch is None:
            raise RuntimeError(
                f"eps warm-up over {options.warmup_epochs} epochs needs the epoch: the trainer must call "
                "step.set_epoch(epoch) before each epoch (or set the defense's attack.warmup_epochs: 0)"
            )
        ramp = options.ramp(self.epoch)
        return options.eps * ramp, options.step_size * ramp

    def epoch_info(self) -> dict[str, float]:
        """What this epoch's attacks use, for the trainer's per-epoch history record."""
        eps, step_size = self.eps()
        return {"eps": eps, "step_size": step_size}

    def __call__(self, model: nn.Module, objective: Objective, images: torch.Tensor) -> torch.Tensor:
        eps, step_size = self.eps()
        # A fresh seed per batch from the trainer's torch seed (reset every epoch): resume replays it exactly.
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
        index = torch.arange(len(images), device=images.device)
        with eval_mode(model), torch.enable_grad():
            target = self._refreshed_fold(model) if self.fold else model
            attack = PGD(target, objective, eps=eps, alpha=step_size, steps=self.options.steps,
                         norm=self.options.norm, random_start=self.options.random_start, seed=seed, amp=self.amp)
            return attack(images.detach(), index)

    def _refreshed_fold(self, model: nn.Module) -> nn.Module:
        """The folded copy of ``model`` with its current weights, traced on first use of each network (EAT
        crafts against each member in turn, and against a fresh :class:`MemberStack` view of them)."""
        if isinstance(model, MemberStack):
            return MemberStack([self._refreshed_fold(member) for member in model.members])
        folded = self._folded.get(id(model))
        if folded is None or folded.source is not model:
            folded = self._folded[id(model)] = RefreshedFold(model)
        return folded.refresh()
