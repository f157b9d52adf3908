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
- ``others``: pure transfer inside the ensemble: a member never trains on an example crafted against itself.
  Each sample draws a source s uniformly, as for ``each_member``; every member holding the sample except s
  trains on the example crafted against s, and s itself, if it holds the sample, trains on a second example
  crafted against a member s' drawn uniformly from the M - 1 others. So for every member, the source of each of
  its examples is uniform over the other M - 1 members (1/M + 1/M * 1/(M-1) = 1/(M-1) each), and holders share one
  example wherever they can. (Attacking the aggregate of the M - 1 others instead would cost M - 1 passes per
  PGD step and member: this reading keeps each_member's one-model attacks.) Attack cost per batch: one PGD per
  sample, plus one per sample whose first source holds it: each_member x (1 + (M-1)/M) under ``complement``
  (x 5/3 for M = 3), x 2 under ``none``, x 1 under ``disjoint`` (and ``complement`` with M = 2: one
  holder per sample).
- ``momentum``: MoCo-style: an exponential moving average of each member's weights (parameters and floating
  BatchNorm buffers, ``w_avg <- d * w_avg + (1 - d) * w``, decay d = ``EATOptions.momentum``, updated after
  every optimiser step) crafts the training examples, with ``each_member``'s source draw: each sample is
  attacked against the *average* of one member drawn uniformly, with that member's live loss (proxies). The
  averages take no gradient; d = 0 is ``each_member`` exactly. The averages start as a copy of the members
  when the first step runs (after any starting weights are loaded). Attack cost: that of ``each_member`` (the
  averages run through the members' own modules, :class:`Averaged`, so the trainer's counter sees them).

A member's parameters are updated only by its own share of the batch (:mod:`eatlib.defenses.splits`); an
attack may query any member on any sample, as an attacker of the deployed ensemble could.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

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

    def after_update(self, members: Sequence[nn.Module]) -> None:
        """Called once the optimiser has updated the members (at the latest before the next step crafts)."""

    def state_dict(self) -> dict:
        """What a checkpoint must hold to resume this scheme exactly (tensors and plain data)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


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


class Others(Transfer):
    def craft(self, adversary, members, criteria, images, labels, shares):
        count, size = len(members), len(images)
        holds = torch.zeros(count, size, dtype=torch.bool, device=images.device)
        for m, share in enumerate(shares):
            holds[m, share] = True
        needed = holds.any(0).nonzero().squeeze(1)
        first = torch.randint(count, (len(needed),), device=images.device)
        second = (first + torch.randint(1, count, (len(needed),), device=images.device)) % count  # != first
        first_holds = holds[first, needed]
        first_used = holds[:, needed].sum(0) > first_holds.long()  # a holder other than the first source
        primary, secondary = images.clone(), images.clone()
        for source, (member, criterion) in enumerate(zip(members, criteria, strict=True)):
            # One attack per source: a position is in at most one of the two lists (second != first).
            to_first, to_second = needed[(first == source) & first_used], needed[(second == source) & first_holds]
            positions = torch.cat([to_first, to_second])
            if len(positions):
                crafted = adversary(member, TrainingLoss(criterion, labels[positions]), images[positions])
                primary[to_first], secondary[to_second] = crafted[: len(to_first)], crafted[len(to_first):]
        first_source = torch.full((size,), -1, dtype=torch.long, device=images.device)
        first_source[needed] = first
        return [
            torch.where((first_source[share] == m).view(-1, 1, 1, 1), secondary[share], primary[share])
            for m, share in enumerate(shares)
        ]


def live_weights(member: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``member`` by name (what :func:`torch.func.functional_call` replaces)."""
    return {**dict(member.named_parameters()), **dict(member.named_buffers())}


class Averaged(nn.Module):
    """``member`` run with ``weights`` (its moving average) in place of its own, through the member's own module
    (so forward hooks, e.g. the trainer's cost counter, see the passes); no gradient reaches either."""

    def __init__(self, member: nn.Module, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.member, self.weights = member, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.member, self.weights, (x,))


class Momentum(EachMember):
    """``each_member`` crafted against the members' moving averages (decay ``decay`` in [0, 1))."""

    def __init__(self, decay: float = 0.99):
        if not 0 <= decay < 1:
            raise ValueError(f"momentum decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.averages: list[dict[str, torch.Tensor]] | None = None

    @torch.no_grad()
    def start(self, members: Sequence[nn.Module]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each member's ``(average, live)`` tensor pairs; the averages copied from the members on the first call
        and kept on their members' devices (members move to the training device after they are built)."""
        if self.averages is None:
            self.averages = [{k: v.detach().clone() for k, v in live_weights(m).items()} for m in members]
        pairs = []
        for weights, member in zip(self.averages, members, strict=True):
            live = live_weights(member)
            if weights.keys() != live.keys():
                raise ValueError(f"momentum: the moving average holds {sorted(weights)}, the member "
                                 f"{sorted(live)}: a checkpoint of another architecture?")
            for name, value in live.items():
                if weights[name].device != value.device:
                    weights[name] = weights[name].to(value.device)
            pairs.append([(weights[name], value) for name, value in live.items()])
        return pairs

    def craft(self, adversary, members, criteria, images, labels, shares):
        self.start(members)
        averaged = [Averaged(member, weights) for member, weights in zip(members, self.averages, strict=True)]
        return super().craft(adversary, averaged, criteria, images, labels, shares)

    @torch.no_grad()
    def after_update(self, members):
        first = self.averages is None
        pairs = self.start(members)
        if first:
            return
        for member_pairs in pairs:
            for average, value in member_pairs:
                if value.is_floating_point():
                    average.lerp_(value.detach(), 1 - self.decay)
                else:  # BatchNorm's batch counter
                    average.copy_(value)

    def state_dict(self):
        return {"averages": self.averages}

    def load_state_dict(self, state):
        averages = state["averages"]
        self.averages = None if averages is None else [dict(weights) for weights in averages]


TRANSFERS: dict[str, type[Transfer]] = {
    "each_member": EachMember,
    "ensemble": WholeEnsemble,
    "bn_stats": BNStats,
    "none": Transfer,
    "others": Others,
    "momentum": Momentum,
}
