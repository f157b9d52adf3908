"""Fetching torchvision's ImageNet weights, with an error that says how to place them by hand when offline."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights, ResNet50_Weights

# torchvision's original ImageNet weights (V1), the ones DML papers start from.
IMAGENET_WEIGHTS = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
    "mobilenet_v2": MobileNet_V2_Weights.IMAGENET1K_V1,
}


class PretrainedWeightsUnavailable(RuntimeError):
    """torchvision's ImageNet weights could not be fetched (offline, blocked, or a corrupt cached file)."""


def load_imagenet_weights(arch: str, model: nn.Module) -> None:
    """Load torchvision's ImageNet weights for ``arch`` into the stock torchvision ``model`` (before any surgery).

    Uses the torch hub cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``):
    a file already there is used without any network access.
    """
    weights = IMAGENET_WEIGHTS[arch]
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    try:
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise PretrainedWeightsUnavailable(
            f"could not fetch the ImageNet weights for {arch} ({type(err).__name__}: {err}). "
            f"On a machine with internet access download {weights.url} and place the file, unchanged, at "
            f"{cached} (the torch hub cache; set TORCH_HOME to move it), or build the model with pretrained=False."
        ) from err
    model.load_state_dict(state)
