"""``trades``: Zhang et al. (2019), adapted to embeddings.

TRADES minimises ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` where ``x'`` maximises the KL term. On an embedding
network the natural-vs-adversarial divergence becomes the squared distance of the L2-normalised embeddings,
``|z(x) - z(x')|^2 = 2 - 2 cos``: the loss is ``L(z(x), y) + beta * mean_i |z(x_i) - z(x'_i)|^2`` and the inner
PGD maximises that distance (the engine's ``embedding_shift`` objective, prepared on the batch's clean
embeddings). As in TRADES the distance term back-propagates through both the clean and the adversarial branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from eatlib.attacks import EmbeddingShift
from eatlib.defenses.adversary import Adversary, AttackOptions, eval_mode
from eatlib.defenses.registry import BuildContext, TrainingSetup, register_training, require
from eatlib.train import Batch


@dataclass(frozen=True)
class TRADESOptions:
    attack: AttackOptions = field(default_factory=AttackOptions)
    beta: float = 6.0  # weight of the robustness (distance) term; TRADES' CIFAR default

    def __post_init__(self):
        require(self.beta >= 0, "beta", self.beta, "a number >= 0")


class TRADESStep:
    def __init__(self, options: TRADESOptions):
        self.options = options
        self.adversary = Adversary(options.attack)

    def set_epoch(self, epoch: int) -> None:
        self.adversary.set_epoch(epoch)

    def epoch_info(self) -> dict[str, float]:
        return self.adversary.epoch_info()

    def __call__(self, model: nn.Module, criterion: nn.Module, batch: Batch) -> torch.Tensor:
        with torch.no_grad(), eval_mode(model):
            anchor = model(batch.images)
        adversarial = self.adversary(model, EmbeddingShift().prepare(anchor), batch.images)
        clean = model(batch.images)
        shift = (clean - model(adversarial)).pow(2).sum(1).mean()
        return criterion(clean, batch.labels) + self.options.beta * shift


@register_training("trades", TRADESOptions)
def build_trades(options: TRADESOptions, context: BuildContext) -> TrainingSetup:
    model = context.make_member()
    return TrainingSetup(model, context.new_loss(model.embedding_dim), TRADESStep(options), {})
