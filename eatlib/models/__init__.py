"""Embedding networks: backbone + linear head + L2 normalisation, with input normalisation inside.

- ``build_model(arch, *, embedding_dim=128, image_size=32, pretrained=False, **arch_options) -> EmbeddingNet``
- ``ARCHITECTURES``: "cnn4", "resnet18", "resnet50", "mobilenet_v2"
- ``Ensemble(members, aggregate="concat" | "mean" | int)``
- ``model_from_config(config)``: rebuild a network or an ensemble from its ``.config`` (architecture only).
- ``fold_batchnorm(model)``: an eval-mode copy with BatchNorm folded into the convolutions (faster attacks);
  ``RefreshedFold(model)``: the same copy for a network that keeps training, refreshed from it per batch.

Inputs are pixel-space images ``[B, 3, S, S]`` in [0, 1]; outputs are L2-normalised ``[B, D]``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from eatlib import params
from eatlib.models.backbones import ARCHITECTURES
from eatlib.models.embedding import EmbeddingNet, build_model, check_pixel_range
from eatlib.models.ensemble import AGGREGATES, Ensemble
from eatlib.models.fold import RefreshedFold, fold_batchnorm
from eatlib.models.pretrained import PretrainedWeightsUnavailable


def _check_options(builder, options, key: str) -> None:
    """``models.<m>.options``: the backbone builder's keyword options (``image_size`` and ``pretrained`` are set
    by ``data.image_size`` and ``models.<m>.pretrained``)."""
    params.check_keywords(builder, options, key, skip=("image_size", "pretrained"))


for _arch, _builder in ARCHITECTURES.items():
    params.ARCHITECTURES.register(_arch, partial(_check_options, _builder))


def model_from_config(config: dict[str, Any]) -> EmbeddingNet | Ensemble:
    """Rebuild the architecture described by ``model.config`` (an EmbeddingNet's or an Ensemble's), for loading
    a checkpoint's state dict into: ImageNet weights are not fetched, since the checkpoint replaces them."""
    if "members" in config:
        members = [model_from_config(member) for member in config["members"]]
        return Ensemble(members, aggregate=config.get("aggregate", "concat"))
    return build_model(**{**config, "pretrained": False})


__all__ = [
    "AGGREGATES",
    "ARCHITECTURES",
    "EmbeddingNet",
    "Ensemble",
    "PretrainedWeightsUnavailable",
    "build_model",
    "check_pixel_range",
    "RefreshedFold",
    "fold_batchnorm",
    "model_from_config",
]
