"""Defenses: classification defenses adapted to deep metric learning, and Ensemble Adversarial Training.

Training defenses (one step function each, run by the shared trainer :func:`eatlib.train.fit`)::

    setup = build_training("eat", {"members": 3}, make_member=lambda: build_model("cnn4"),
                           num_classes=train.num_classes, num_samples=len(train), loss_cfg=cfg.loss, seed=0)
    fit(setup.model.to(device), setup.criterion.to(device), train, val, cfg, out_dir=..., step=setup.step,
        meta={..., **setup.meta})

``standard``, ``pgd_at``, ``trades``, ``iat``, ``adp``, ``eat`` (:data:`TRAINING_DEFENSES`). Inference-time
defenses wrap a trained model (:data:`INFERENCE_DEFENSES`): ``input_transform``, ``randomization``, ``bart``,
``mixup_inference``; randomised ones have ``randomized = True`` (evaluate them with EOT)::

    defended = build_inference("randomization", model, {"min_scale": 0.9})

Every defense's options are a frozen dataclass, registered with :mod:`eatlib.params`, which validates the
``defenses:`` section of params.yaml (one subsection per defense) by them.
"""

# Importing each defense's module registers it.
from eatlib.defenses import (  # noqa: F401
    adp,
    bart,
    eat,
    iat,
    input_transform,
    mixup_inference,
    pgd_at,
    randomization,
    standard,
    trades,
)
from eatlib.defenses.adversary import Adversary, AttackOptions, MemberLosses, MemberStack, TrainingLoss, eval_mode
from eatlib.defenses.inference import InferenceDefense
from eatlib.defenses.registry import (
    INFERENCE_DEFENSES,
    TRAINING_DEFENSES,
    BuildContext,
    TrainingSetup,
    build_inference,
    build_training,
)
from eatlib.defenses.splits import SPLITS, batch_share, membership
from eatlib.defenses.transfer import TRANSFERS, average_batchnorm_statistics

__all__ = [
    "TRAINING_DEFENSES", "INFERENCE_DEFENSES", "BuildContext", "TrainingSetup", "build_training", "build_inference",
    "AttackOptions", "Adversary", "TrainingLoss", "MemberStack", "MemberLosses",
    "eval_mode", "InferenceDefense", "SPLITS", "TRANSFERS", "membership", "batch_share",
    "average_batchnorm_statistics",
]
