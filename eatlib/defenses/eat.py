"""``eat``: Ensemble Adversarial Training, as this project reads the paper (see docs/paper.md).

M members (``members``, default 3) are trained together by the shared trainer, each with its own loss and
proxies. Diversity comes from data splits (``split``, :mod:`eatlib.defenses.splits`): a member trains only on
its share of each batch, found from the batch's dataset indices. Self-transfer (``transfer``,
:mod:`eatlib.defenses.transfer`) decides which adversarial examples (or statistics) each member learns from.
The deployed model is an :class:`eatlib.models.Ensemble` whose ``aggregate`` (``concat`` default, ``mean``, or a
member index) combines the members' embeddings. The step's loss is the mean over members of each member's
loss on its share (the members share no parameters, so each member's gradient is that of its own loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from eatlib.defenses.adversary import Adversary, AttackOptions
from eatlib.defenses.pgd_at import check_clean_weight, with_clean_term
from eatlib.defenses.registry import BuildContext, TrainingSetup, register_training, require
from eatlib.defenses.splits import SPLITS, batch_share, membership
from eatlib.defenses.transfer import TRANSFERS, Transfer
from eatlib.models import Ensemble
from eatlib.train import Batch

AGGREGATES = ("concat", "mean")


def check_members(members: int) -> None:
    require(members >= 2, "members", members, "an integer >= 2 (an ensemble)")


def check_aggregate(aggregate: str | int, members: int) -> None:
    require(
        aggregate in AGGREGATES or (isinstance(aggregate, int) and 0 <= aggregate < members),
        "aggregate",
        aggregate,
        f"{AGGREGATES} or a member index 0..{members - 1}",
    )


def build_ensemble(context: BuildContext, members: int, aggregate: str | int) -> tuple[nn.Module, nn.ModuleList]:
    """``(Ensemble of fresh members, ModuleList of one fresh loss per member)``."""
    nets = [context.make_member() for _ in range(members)]
    criteria = nn.ModuleList(context.new_loss(net.embedding_dim) for net in nets)
    return Ensemble(nets, aggregate=aggregate), criteria


@dataclass(frozen=True)
class EATOptions:
    members: int = 3
    split: str = "complement"  # complement | disjoint | bootstrap | none
    transfer: str = "each_member"  # each_member | ensemble | bn_stats | none
    aggregate: str | int = "concat"  # concat | mean | a member index
    attack: AttackOptions = field(default_factory=AttackOptions)
    clean_weight: float = 0.0  # (1 - w) * adversarial loss + w * clean loss, per member

    def __post_init__(self):
        check_members(self.members)
        require(self.split in SPLITS, "split", self.split, str(sorted(SPLITS)))
        require(self.transfer in TRANSFERS, "transfer", self.transfer, str(sorted(TRANSFERS)))
        check_aggregate(self.aggregate, self.members)
        check_clean_weight(self.clean_weight)


class EATStep:
    """``step(ensemble, criteria, batch) -> loss``. ``membership [M, N]``: see :mod:`eatlib.defenses.splits`."""

    def __init__(self, options: EATOptions, membership: torch.Tensor, transfer: Transfer):
        self.options, self.membership, self.transfer = options, membership, transfer
        self.adversary = Adversary(options.attack)

    def set_epoch(self, epoch: int) -> None:
        self.adversary.set_epoch(epoch)

    def epoch_info(self) -> dict[str, float]:
        return self.adversary.epoch_info()

    def shares(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """Per member, the batch positions it trains on (repeated for bootstrap multiplicities)."""
        return [batch_share(counts, indices) for counts in self.membership]

    def __call__(self, model: nn.Module, criterion: nn.ModuleList, batch: Batch) -> torch.Tensor:
        members, shares = list(model.members), self.shares(batch.indices)
        adversarial = self.transfer.craft(self.adversary, members, criterion, batch.images, batch.labels, shares)
        losses = [
            self._member_loss(member, loss, batch.images[share], adv, batch.labels[share])
            for member, loss, share, adv in zip(members, criterion, shares, adversarial, strict=True)
            if len(share)
        ]
        self.transfer.after_forward(members)
        if not losses:  # no member owns any sample of this batch (possible only for tiny bootstrap batches)
            return torch.zeros((), device=batch.images.device, requires_grad=True)
        return torch.stack(losses).sum() / len(members)

    def _member_loss(self, member, loss, clean, adversarial, labels) -> torch.Tensor:
        return with_clean_term(loss(member(adversarial), labels), lambda: loss(member(clean), labels),
                               self.options.clean_weight)


@register_training("eat", EATOptions)
def build_eat(options: EATOptions, context: BuildContext) -> TrainingSetup:
    model, criteria = build_ensemble(context, options.members, options.aggregate)
    transfer = TRANSFERS[options.transfer]()
    transfer.prepare_members(list(model.members))
    shares = membership(options.split, options.members, context.num_samples, context.seed)
    return TrainingSetup(model, criteria, EATStep(options, shares, transfer), {})
