"""EAT's self-transfer: how the robustness information of the whole ensemble reaches each member's update.

A transfer scheme crafts every member's adversarial training examples (``craft``), may prepare the members
before training (``prepare_members``) and may act after the members' forward passes (``after_forward``):

- ``each_member`` (default): each sample of the batch draws a source member uniformly at random and is attacked
  against that member alone; every member then trains on its share of the batch, so its examples were crafted
  against each member of the ensemble (itself ~1/M of the time). The ensemble transfers its own adversarial
  examples to itself, where Tramer et al. transferred those of fixed pre-trained models. Attack cost: one PGD
  per sample, as for a single model.
- ``ensemble``: examples crafted against the whole ensemble at once (the sum of the members' losses, each with its
  own proxies), shared by every member. Attack cost: M forward-backward passes per PGD step.
- ``bn_stats``: each member trains on examples crafted against itself, and after every step the members'
  BatchNorm running statistics are replaced by their ensemble average (those statistics normalise the
  eval-mode passes: the attacks crafting the next examples and inference). Averaging per channel only means
  something if the members' channels correspond, so the members start from one shared initialisation.
- ``none``: each member trains on examples crafted against itself (independent adversarial training on the
  split: the ablation without transfer).

A member's parameters are updated only by its own share of the batch (:mod:`eatlib.defenses.splits`); an
attack may query any member on any sample, as an attacker of the deployed ensemble could.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eatlib.defenses.adversary import Adversary, MemberLosses, MemberStack, TrainingLoss


class Transfer:
    """Base: each member attacked on its own share, nothing shared (the ``none`` scheme)."""

    def prepare_members(self, members: Sequence[nn.Module]) -> None:
        """Called once when the ensemble is built."""

    def craft(self, adversary: Adversary, members: Sequence[nn.Module], criteria: Sequence[nn.Module],
              images: torch.Tensor, labels: torch.Tensor, shares: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Adversarial images for each member: ``result[m]`` is ``[len(shares[m]), 3, S, S]``, the examples of
        batch positions ``shares[m]`` that member m trains on."""
        return [
            adversary(member, TrainingLoss(criterion, labels[share]), images[share]) if len(share) else images[share]
            for member, criterion, share in zip(members, criteria, shares, strict=True)
        ]

    def after_forward(self, members: Sequence[nn.Module]) -> None:
        """Called after the members' training forward passes of every step."""


class EachMember(Transfer):
    def craft(self, adversary, members, criteria, images, labels, shares):
        adversarial = images.clone()
        needed = torch.unique(torch.cat(list(shares)))
        sources = torch.randint(len(members), (len(needed),), device=images.device)
        for source, (member, criterion) in enumerate(zip(members, criteria, strict=True)):
            positions = needed[sources == source]
            if len(positions):
                objective = TrainingLoss(criterion, labels[positions])
                adversarial[positions] = adversary(member, objective, images[positions])
        return [adversarial[share] for share in shares]


class WholeEnsemble(Transfer):
    def craft(self, adversary, members, criteria, images, labels, shares):
        adversarial = images.clone()
        needed = torch.unique(torch.cat(list(shares)))
        objective = TrainingLoss(MemberLosses(criteria), labels[needed])
        adversarial[needed] = adversary(MemberStack(members), objective, images[needed])
        return [adversarial[share] for share in shares]


class BNStats(Transfer):
    def prepare_members(self, members):
        for member in members[1:]:
            member.load_state_dict(members[0].state_dict())

    @torch.no_grad()
    def after_forward(self, members):
        average_batchnorm_statistics(members)


def batchnorm_layers(member: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in member.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def average_batchnorm_statistics(members: Sequence[nn.Module]) -> None:
    """Set every member's BatchNorm running mean and variance to the members' average, layer by layer.

    New tensors replace the buffers rather than being copied into them: the training forward pass that has just
    run saved the old ones for its backward pass, which must not see them modified in place."""
    layers = [batchnorm_layers(member) for member in members]
    for same_layer in zip(*layers, strict=True):
        for name in ("running_mean", "running_var"):
            if getattr(same_layer[0], name) is None:
                continue
            mean = torch.stack([getattr(layer, name) for layer in same_layer]).mean(0)
            for layer in same_layer:
                setattr(layer, name, mean.clone())


TRANSFERS: dict[str, type[Transfer]] = {
    "each_member": EachMember,
    "ensemble": WholeEnsemble,
    "bn_stats": BNStats,
    "none": Transfer,
}
