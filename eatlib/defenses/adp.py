"""``adp``: Adaptive Diversity Promoting regulariser (Pang et al., 2019), adapted to proxy losses.

ADP trains an ensemble with ``sum_m L_m - alpha * H(mean_m p_m) - beta * log(ED + offset)``: the members'
losses, minus the entropy of the ensemble's prediction (keep it uncertain where members disagree), minus the
log-determinant of the Gram matrix of the members' *non-maximal* predictions (each member's prediction with the
true class zeroed and the rest L2-normalised: members should disagree about the wrong classes).

Adaptation: an embedding network has no classifier, so member m's prediction is the proxy softmax
``p_m = softmax(scale * cos(z_m, proxies_m))`` over its own loss's class proxies (which is why ADP needs a proxy
loss). The losses are summed over members as in ADP (``alpha`` and ``beta`` are relative to that sum).
``adversarial: true`` trains on PGD examples crafted against the whole ensemble (the sum of the members' losses),
ADP's "ADP + AT" variant; ``clean_weight`` then mixes in the clean ADP loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from eatlib.defenses.adversary import Adversary, AttackOptions, MemberLosses, MemberStack, TrainingLoss
from eatlib.defenses.eat import build_ensemble, check_aggregate, check_members
from eatlib.defenses.pgd_at import check_clean_weight, with_clean_term
from eatlib.defenses.registry import BuildContext, TrainingSetup, register_training, require
from eatlib.params import ConfigError
from eatlib.train import Batch


@dataclass(frozen=True)
class ADPOptions:
    members: int = 3
    alpha: float = 2.0  # weight of the ensemble entropy (ADP's default)
    beta: float = 0.5  # weight of the log-det of non-maximal predictions (ADP's default)
    log_det_offset: float = 1e-6  # added to the Gram matrix's diagonal, as in ADP
    scale: float = 16.0  # inverse temperature of the proxy softmax
    aggregate: str | int = "concat"
    adversarial: bool = False
    attack: AttackOptions = field(default_factory=AttackOptions)
    clean_weight: float = 0.0

    def __post_init__(self):
        check_members(self.members)
        require(self.alpha >= 0, "alpha", self.alpha, "a number >= 0")
        require(self.beta >= 0, "beta", self.beta, "a number >= 0")
        require(self.log_det_offset > 0, "log_det_offset", self.log_det_offset, "a number > 0")
        require(self.scale > 0, "scale", self.scale, "a number > 0")
        check_aggregate(self.aggregate, self.members)
        check_clean_weight(self.clean_weight)


def adp_regulariser(probs: torch.Tensor, labels: torch.Tensor, *, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ensemble entropy, log-det)`` averaged over the batch, from the members' predictions ``[B, M, C]``."""
    ensemble = probs.mean(1)
    entropy = -(ensemble * ensemble.clamp_min(1e-20).log()).sum(1).mean()
    wrong = 1 - F.one_hot(labels, probs.shape[2]).to(probs.dtype)
    non_maximal = F.normalize(probs * wrong[:, None, :], dim=2)
    gram = non_maximal @ non_maximal.transpose(1, 2)
    eye = torch.eye(probs.shape[1], dtype=probs.dtype, device=probs.device)
    return entropy, torch.logdet(gram + offset * eye).mean()


class ADPStep:
    def __init__(self, options: ADPOptions):
        self.options = options
        self.adversary = Adversary(options.attack)

    def set_epoch(self, epoch: int) -> None:
        self.adversary.set_epoch(epoch)

    def epoch_info(self) -> dict[str, float]:
        return self.adversary.epoch_info() if self.options.adversarial else {}

    def loss(self, members, criteria, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ADP's loss of the ensemble on ``images``."""
        options = self.options
        embeddings = [member(images) for member in members]
        total = sum(criterion(z, labels) for z, criterion in zip(embeddings, criteria, strict=True))
        probs = torch.stack([
            F.softmax(options.scale * F.normalize(z, dim=1) @ F.normalize(criterion.proxies, dim=1).T, dim=1)
            for z, criterion in zip(embeddings, criteria, strict=True)
        ], dim=1)
        entropy, log_det = adp_regulariser(probs, labels, offset=options.log_det_offset)
        return total - options.alpha * entropy - options.beta * log_det

    def __call__(self, model: nn.Module, criterion: nn.ModuleList, batch: Batch) -> torch.Tensor:
        members = list(model.members)
        if not self.options.adversarial:
            return self.loss(members, criterion, batch.images, batch.labels)
        objective = TrainingLoss(MemberLosses(criterion), batch.labels)
        adversarial = self.adversary(MemberStack(members), objective, batch.images)
        return with_clean_term(self.loss(members, criterion, adversarial, batch.labels),
                               lambda: self.loss(members, criterion, batch.images, batch.labels),
                               self.options.clean_weight)


@register_training("adp", ADPOptions)
def build_adp(options: ADPOptions, context: BuildContext) -> TrainingSetup:
    model, criteria = build_ensemble(context, options.members, options.aggregate)
    if not all(isinstance(getattr(c, "proxies", None), torch.Tensor) for c in criteria):
        raise ConfigError(
            f"defenses.adp: ADP's predictions are proxy softmaxes and need a proxy loss, but train.loss.name is "
            f"{context.loss.name!r}; use proxy_anchor"
        )
    return TrainingSetup(model, criteria, ADPStep(options), {})
