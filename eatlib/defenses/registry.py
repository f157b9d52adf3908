"""The registries of defenses, and the one call that builds what a training defense trains.

A *training defense* is a registered builder ``build(options, context) -> TrainingSetup``: the model (a single
network or an :class:`eatlib.models.Ensemble`), the criterion (the loss, or a ``ModuleList`` of one loss per
member) and the step function the shared trainer (:func:`eatlib.train.fit`) runs on every batch. Its options
are a frozen dataclass, validated strictly by :func:`eatlib.params.from_dict`, so that ``params.yaml`` holds one
subsection per defense under ``defenses:``.

An *inference defense* is a registered ``nn.Module`` wrapper class built around a trained model
(:func:`build_inference`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from eatlib import params
from eatlib.losses import build_loss
from eatlib.params import ConfigError, LossConfig, parse_options, to_dict


def require(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` naming ``key``, the bad ``value`` and what is ``allowed`` (used by options'
    ``__post_init__``; :func:`from_dict` prefixes the section, e.g. ``defenses.eat.members``)."""
    if not condition:
        raise ConfigError(f"{key}: got {value!r}; allowed: {allowed}")


@dataclass(frozen=True)
class BuildContext:
    """What every training builder may need besides its own options.

    ``make_member()`` returns a fresh, randomly initialised :class:`eatlib.models.EmbeddingNet` (ensembles call it
    once per member); ``num_samples`` is the size of the training set (data splits are drawn over it, by the
    dataset indices that :class:`eatlib.train.Batch` carries); ``seed`` makes such draws reproducible.
    ``craft_bf16`` crafts the adversarial training examples under bf16 autocast (``Adversary(..., amp=...)``; a
    per-architecture speed choice, see benchmarks/engine.py); the weight update stays as the trainer runs it.
    """

    make_member: Callable[[], nn.Module]
    num_classes: int
    num_samples: int
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    craft_bf16: bool = False

    def new_loss(self, embedding_dim: int) -> nn.Module:
        """A fresh training loss (with its own proxies, for proxy losses)."""
        return build_loss(self.loss.name, self.num_classes, embedding_dim, **self.loss.options)


@dataclass
class TrainingSetup:
    """What :func:`eatlib.train.fit` trains: ``fit(setup.model, setup.criterion, ..., step=setup.step,
    meta={..., **setup.meta})``. Move ``model`` and ``criterion`` to the training device first."""

    model: nn.Module
    criterion: nn.Module
    step: Callable
    meta: dict


@dataclass(frozen=True)
class _Entry:
    options: type
    build: Callable


TRAINING_DEFENSES: dict[str, _Entry] = {}
INFERENCE_DEFENSES: dict[str, _Entry] = {}


def register_training(name: str, options: type):
    """Decorator: register ``build(options, context) -> TrainingSetup`` under ``name``."""

    def decorate(build):
        TRAINING_DEFENSES[name] = _Entry(options, build)
        params.TRAINING_DEFENSES.register(name, options)  # params validates defenses.<name> by it
        return build

    return decorate


def register_inference(name: str, options: type):
    """Decorator: register an inference wrapper class ``cls(model, options, **context)`` under ``name``."""

    def decorate(cls):
        cls.defense_name = name
        INFERENCE_DEFENSES[name] = _Entry(options, cls)
        params.INFERENCE_DEFENSES.register(name, options)
        return cls

    return decorate


def build_training(
    name: str,
    options: Any = None,
    *,
    make_member: Callable[[], nn.Module],
    num_classes: int,
    num_samples: int,
    loss_cfg: LossConfig | None = None,
    seed: int = 0,
    craft_bf16: bool = False,
    craft_folded: bool = False,
) -> TrainingSetup:
    """Build training defense ``name`` (a key of :data:`TRAINING_DEFENSES`) with ``options`` (its options
    dataclass, or the plain mapping of its ``defenses.<name>`` subsection). ``craft_bf16``: see
    :class:`BuildContext`; ``craft_folded``: craft against a BatchNorm-folded copy of the model
    (:class:`eatlib.defenses.adversary.Adversary`'s ``fold``; not yet a pipeline parameter)."""
    options = parse_options(name, options, params.TRAINING_DEFENSES)
    context = BuildContext(make_member, num_classes, num_samples, loss_cfg or LossConfig(), seed, craft_bf16)
    setup = TRAINING_DEFENSES[name].build(options, context)
    # Every adversarial step crafts through one Adversary (eatlib.defenses.adversary) at ``step.adversary``;
    # set here once rather than threaded through each builder. A defense without one has nothing to craft.
    adversary = getattr(setup.step, "adversary", None)
    if adversary is not None:
        adversary.amp, adversary.fold = bool(craft_bf16), bool(craft_folded)
    setup.meta = {"defense": name, "defense_options": to_dict(options), **setup.meta}
    return setup


def build_inference(name: str, model: nn.Module, options: Any = None, **context) -> nn.Module:
    """Wrap trained ``model`` in inference defense ``name`` (a key of :data:`INFERENCE_DEFENSES`).
    ``context``: what a defense needs besides its options (``mixup_inference``: ``references``)."""
    options = parse_options(name, options, params.INFERENCE_DEFENSES)
    return INFERENCE_DEFENSES[name].build(model, options, **context)
