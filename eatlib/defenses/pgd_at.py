"""``pgd_at``: Madry et al. (2018) adversarial training, adapted to metric learning.

Minimise the training loss (Proxy-Anchor by default) on PGD examples that maximise that same loss, with the
batch's labels and the current proxies. ``clean_weight`` mixes in the clean loss
(``(1 - w) * L(adv) + w * L(clean)``; Madry's method is ``w = 0``, Goodfellow's / Kurakin's mixture ``w = 0.5``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from eatlib.defenses.adversary import Adversary, AttackOptions, TrainingLoss
from eatlib.defenses.registry import BuildContext, TrainingSetup, register_training, require
from eatlib.train import Batch


def check_clean_weight(value: float) -> None:
    require(0 <= value <= 1, "clean_weight", value, "0 <= value <= 1 (0: adversarial loss only)")


def with_clean_term(
    adversarial_loss: torch.Tensor, clean_loss: Callable[[], torch.Tensor], weight: float
) -> torch.Tensor:
    """``(1 - weight) * adversarial_loss + weight * clean_loss()``; the clean pass runs only when weighted."""
    if weight == 0:
        return adversarial_loss
    return (1 - weight) * adversarial_loss + weight * clean_loss()


@dataclass(frozen=True)
class PGDATOptions:
    attack: AttackOptions = field(default_factory=AttackOptions)
    clean_weight: float = 0.0

    def __post_init__(self):
        check_clean_weight(self.clean_weight)


class PGDATStep:
    """``step(model, criterion, batch) -> loss`` on PGD examples of the training loss."""

    def __init__(self, options: PGDATOptions):
        self.options = options
        self.adversary = Adversary(options.attack)

    def set_epoch(self, epoch: int) -> None:
        self.adversary.set_epoch(epoch)

    def epoch_info(self) -> dict[str, float]:
        return self.adversary.epoch_info()

    def __call__(self, model: nn.Module, criterion: nn.Module, batch: Batch) -> torch.Tensor:
        adversarial = self.adversary(model, TrainingLoss(criterion, batch.labels), batch.images)
        loss = criterion(model(adversarial), batch.labels)
        return with_clean_term(loss, lambda: criterion(model(batch.images), batch.labels), self.options.clean_weight)


@register_training("pgd_at", PGDATOptions)
def build_pgd_at(options: PGDATOptions, context: BuildContext) -> TrainingSetup:
    model = context.make_member()
    return TrainingSetup(model, context.new_loss(model.embedding_dim), PGDATStep(options), {})
