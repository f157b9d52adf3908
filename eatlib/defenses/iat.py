"""``iat``: Interpolated Adversarial Training (Lamb et al., 2019), adapted to metric learning.

Loss = ``(L_mix(x) + L_mix(x_adv)) / 2``: mixup on the clean batch and, separately, mixup on its PGD examples
(crafted on the un-mixed clean batch against the training loss, as in the paper). The mixed targets of a proxy
loss are mixed inside its per-proxy sums (see :mod:`eatlib.defenses.mixup`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from eatlib.defenses.adversary import Adversary, AttackOptions, TrainingLoss
from eatlib.defenses.mixup import mixup_loss
from eatlib.defenses.registry import BuildContext, TrainingSetup, register_training, require
from eatlib.train import Batch


@dataclass(frozen=True)
class IATOptions:
    attack: AttackOptions = field(default_factory=AttackOptions)
    mixup_alpha: float = 1.0  # lam ~ Beta(alpha, alpha); IAT's default

    def __post_init__(self):
        require(self.mixup_alpha > 0, "mixup_alpha", self.mixup_alpha, "a number > 0")


class IATStep:
    def __init__(self, options: IATOptions):
        self.options = options
        self.adversary = Adversary(options.attack)

    def set_epoch(self, epoch: int) -> None:
        self.adversary.set_epoch(epoch)

    def epoch_info(self) -> dict[str, float]:
        return self.adversary.epoch_info()

    def __call__(self, model: nn.Module, criterion: nn.Module, batch: Batch) -> torch.Tensor:
        adversarial = self.adversary(model, TrainingLoss(criterion, batch.labels), batch.images)
        alpha = self.options.mixup_alpha
        clean = mixup_loss(model, criterion, batch.images, batch.labels, alpha)
        return (clean + mixup_loss(model, criterion, adversarial, batch.labels, alpha)) / 2


@register_training("iat", IATOptions)
def build_iat(options: IATOptions, context: BuildContext) -> TrainingSetup:
    model = context.make_member()
    return TrainingSetup(model, context.new_loss(model.embedding_dim), IATStep(options), {})
