"""BatchNorm folding for deployed networks: the same function in fewer passes over memory.

In eval mode a BatchNorm is a fixed affine map per channel, so a convolution followed by one is a single
convolution with rescaled weights and a bias. Attacks differentiate through the deployed network hundreds of
times per image; on 32px networks the BatchNorms cost more than the convolutions (MobileNetV2 at width 0.5:
37% of a forward-backward), so folding them makes attacks faster (benchmarks/attack_speed.py prints how much)
without changing what is attacked: the embeddings and their input gradients agree up to float rounding.
"""

from __future__ import annotations

import copy
import warnings

from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from eatlib.models.embedding import EmbeddingNet


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the convolution before it, in every
    :class:`EmbeddingNet` inside ``model`` (itself, an ensemble's members, a randomised defense's network).

    ``model`` must be in eval mode (a BatchNorm in train mode normalises with batch statistics and cannot be
    folded) and is left untouched. Backbones are folded through torch.fx's symbolic tracing; one that does not
    trace (data-dependent control flow) stays as it is, with a warning: same results, only slower.
    """
    if model.training:
        raise ValueError("fold_batchnorm: the model is in train mode, where BatchNorm uses batch statistics and "
                         "cannot be folded; call model.eval() first")
    folded = copy.deepcopy(model)
    for net in [m for m in folded.modules() if isinstance(m, EmbeddingNet)]:
        try:
            net.backbone = fuse(net.backbone, inplace=True)
        except (fx.proxy.TraceError, TypeError, NotImplementedError) as error:
            warnings.warn(f"fold_batchnorm: {type(net.backbone).__name__} does not trace with torch.fx ({error}); "
                          "its BatchNorms stay unfolded (same results, slower attacks)", stacklevel=2)
    return folded.eval()
