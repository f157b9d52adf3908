"""``standard``: plain metric learning on clean images (the undefended baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from eatlib.defenses.registry import BuildContext, TrainingSetup, register_training
from eatlib.train import standard_step


@dataclass(frozen=True)
class StandardOptions:
    """No options: the baseline is the shared trainer's plain step."""


@register_training("standard", StandardOptions)
def build_standard(options: StandardOptions, context: BuildContext) -> TrainingSetup:
    model = context.make_member()
    return TrainingSetup(model, context.new_loss(model.embedding_dim), standard_step, {})
