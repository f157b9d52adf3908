"""``eat``: Ensemble Adversarial Training, as this project reads the paper (see docs/paper.md).

M members (``members``, default 3) are trained together by the shared trainer, each with its own loss and
proxies. Diversity comes from data splits (``split``, :mod:`eatlib.defenses.splits`): a member trains only on
its share of each batch, found from the batch's dataset indices. Self-transfer (``transfer``,
:mod:`eatlib.defenses.transfer`) decides which adversarial examples (or statistics) each member learns from.
The deployed model is an :class:`eatlib.models.Ensemble` whose ``aggregate`` (``concat`` default, ``mean``, or a
member index) combines the members' embeddings. The step's loss is the mean over members of each member's
loss on its share (the members share no parameters, so each member's gradient is that of its own loss).

Gradient diversity (``gradient_diversity`` = w > 0; GAL, Kariyappa & Qureshi 2019; TRS, Yang et al. 2021): the
loss gains ``w * mean over member pairs (a, b) of mean over the batch samples both hold of
cos(g_a(i), g_b(i))``, where ``g_m(i)`` is the gradient of member m's training loss on its share with respect to
its training input of sample i (its adversarial example; summed over bootstrap repeats). It is differentiated
(``create_graph=True``), so it trains the members to disagree about the directions that hurt them. Pairs that
hold no common sample (``disjoint`` split) add nothing; with every pair empty the term is 0. A member's
parameters still see only its own share. Cost: no extra forward pass (the training passes are reused), but a
double backward through each member's training pass, about one more forward-backward per training image; the
step reports those images per epoch as ``gradient_diversity_images`` (the trainer's ``forward_backward_images``
counts forward passes only). w = 0 (default) computes nothing of it.

Momentum averages (``transfer: momentum``) are updated after the optimiser step: through
:meth:`EATStep.after_optimizer_step` where the trainer calls it, else at the start of the next step (the weights
are the same then, so the result is identical). :meth:`EATStep.state_dict` holds them for a checkpoint; a
trainer that does not save it re-initialises the averages from the live members on resume.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from eatlib.defenses.adversary import Adversary, AttackOptions
from eatlib.defenses.pgd_at import check_clean_weight, with_clean_term
from eatlib.defenses.registry import BuildContext, TrainingSetup, register_training, require
from eatlib.defenses.splits import SPLITS, batch_share, membership
from eatlib.defenses.transfer import TRANSFERS, Momentum, Transfer
from eatlib.models import Ensemble
from eatlib.train import Batch

AGGREGATES = ("concat", "mean")
DEFAULT_MOMENTUM = 0.99


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
    transfer: str = "each_member"  # each_member | ensemble | bn_stats | none | others | momentum
    aggregate: str | int = "concat"  # concat | mean | a member index
    attack: AttackOptions = field(default_factory=AttackOptions)
    clean_weight: float = 0.0  # (1 - w) * adversarial loss + w * clean loss, per member
    momentum: float = DEFAULT_MOMENTUM  # transfer: momentum only: decay d of w_avg <- d * w_avg + (1 - d) * w
    gradient_diversity: float = 0.0  # weight of the members' input-gradient alignment (GAL/TRS); 0: off

    def __post_init__(self):
        check_members(self.members)
        require(self.split in SPLITS, "split", self.split, str(sorted(SPLITS)))
        require(self.transfer in TRANSFERS, "transfer", self.transfer, str(sorted(TRANSFERS)))
        check_aggregate(self.aggregate, self.members)
        check_clean_weight(self.clean_weight)
        require(0 <= self.momentum < 1, "momentum", self.momentum,
                "a number in [0, 1), the moving average's decay, e.g. 0.99")
        require(self.transfer == "momentum" or self.momentum == DEFAULT_MOMENTUM, "momentum", self.momentum,
                f"only transfer: momentum reads it: set transfer: momentum, or leave momentum at {DEFAULT_MOMENTUM}")
        require(math.isfinite(self.gradient_diversity) and self.gradient_diversity >= 0, "gradient_diversity",
                self.gradient_diversity, "a number >= 0 (0 turns the penalty off), e.g. 0.5")


class EATStep:
    """``step(ensemble, criteria, batch) -> loss``. ``membership [M, N]``: see :mod:`eatlib.defenses.splits`.

    Hooks for the trainer beyond the step call: ``after_optimizer_step()`` (right after ``optimizer.step()``)
    and ``state_dict()`` / ``load_state_dict(state)`` (with a checkpoint); see the module docstring."""

    def __init__(self, options: EATOptions, membership: torch.Tensor, transfer: Transfer):
        self.options, self.membership, self.transfer = options, membership, transfer
        self.adversary = Adversary(options.attack)
        self._members: list[nn.Module] | None = None
        self._update_pending = False  # the members changed since the transfer last saw them
        self.gradient_diversity_images = 0

    def set_epoch(self, epoch: int) -> None:
        self.adversary.set_epoch(epoch)
        self.gradient_diversity_images = 0

    def epoch_info(self) -> dict[str, float]:
        info = self.adversary.epoch_info()
        if self.options.gradient_diversity > 0:
            info["gradient_diversity_images"] = self.gradient_diversity_images
        return info

    def after_optimizer_step(self) -> None:
        """The optimiser has updated the members: let the transfer follow (momentum averages)."""
        if self._update_pending and self._members is not None:
            self.transfer.after_update(self._members)
        self._update_pending = False

    def state_dict(self) -> dict:
        return {"transfer": self.transfer.state_dict(), "update_pending": self._update_pending}

    def load_state_dict(self, state: dict) -> None:
        self.transfer.load_state_dict(state["transfer"])
        self._update_pending = bool(state["update_pending"])

    def shares(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """Per member, the batch positions it trains on (repeated for bootstrap multiplicities)."""
        return [batch_share(counts, indices) for counts in self.membership]

    def __call__(self, model: nn.Module, criterion: nn.ModuleList, batch: Batch) -> torch.Tensor:
        members, shares = list(model.members), self.shares(batch.indices)
        self._members = members
        self.after_optimizer_step()  # a no-op where the trainer already called it
        adversarial = self.transfer.craft(self.adversary, members, criterion, batch.images, batch.labels, shares)
        diversity = self.options.gradient_diversity
        if diversity > 0:  # the input gradients need the training inputs as leaves of the graph
            adversarial = [adv.detach().requires_grad_(True) for adv in adversarial]
        losses = {
            m: self._member_loss(member, loss, batch.images[share], adv, batch.labels[share])
            for m, (member, loss, share, adv) in enumerate(zip(members, criterion, shares, adversarial, strict=True))
            if len(share)
        }
        self.transfer.after_forward(members)
        self._update_pending = True
        if not losses:  # no member owns any sample of this batch (possible only for tiny bootstrap batches)
            return torch.zeros((), device=batch.images.device, requires_grad=True)
        loss = torch.stack(list(losses.values())).sum() / len(members)
        if diversity > 0:
            self.gradient_diversity_images += sum(len(shares[m]) for m in losses)
            loss = loss + diversity * gradient_alignment(losses, adversarial, shares, len(batch.images))
        return loss

    def _member_loss(self, member, loss, clean, adversarial, labels) -> torch.Tensor:
        return with_clean_term(loss(member(adversarial), labels), lambda: loss(member(clean), labels),
                               self.options.clean_weight)


def gradient_alignment(losses: dict[int, torch.Tensor], inputs: list[torch.Tensor], shares: list[torch.Tensor],
                       batch_size: int) -> torch.Tensor:
    """Mean over member pairs of the mean cosine similarity of their input gradients on the samples both hold.

    ``losses[m]``: member m's training loss (scalar, computed from ``inputs[m]``, a leaf ``[len(shares[m]), 3,
    S, S]`` whose rows are batch positions ``shares[m]``). Differentiable (``create_graph=True``); 0 (with a
    graph) when no pair holds a common sample."""
    grads, held = {}, {}
    for m, loss in losses.items():
        (grad,) = torch.autograd.grad(loss, inputs[m], create_graph=True)
        grads[m] = grad.new_zeros(batch_size, *grad.shape[1:]).index_add(0, shares[m], grad).flatten(1)
        held[m] = torch.zeros(batch_size, dtype=torch.bool, device=grad.device).index_fill_(0, shares[m], True)
    cosines = [
        F.cosine_similarity(grads[a][both], grads[b][both], dim=1, eps=1e-12).mean()
        for a, b in itertools.combinations(sorted(grads), 2)
        if (both := held[a] & held[b]).any()
    ]
    if not cosines:
        return sum(grad.sum() for grad in grads.values()) * 0.0
    return torch.stack(cosines).mean()


def build_transfer(options: EATOptions) -> Transfer:
    """The transfer scheme ``options.transfer`` names (with its own options)."""
    if options.transfer == "momentum":
        return Momentum(options.momentum)
    return TRANSFERS[options.transfer]()


@register_training("eat", EATOptions)
def build_eat(options: EATOptions, context: BuildContext) -> TrainingSetup:
    model, criteria = build_ensemble(context, options.members, options.aggregate)
    transfer = build_transfer(options)
    transfer.prepare_members(list(model.members))
    shares = membership(options.split, options.members, context.num_samples, context.seed)
    return TrainingSetup(model, criteria, EATStep(options, shares, transfer), {})
