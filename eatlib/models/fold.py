"""BatchNorm folding for deployed networks: the same function in fewer passes over memory.

In eval mode a BatchNorm is a fixed affine map per channel, so a convolution followed by one is a single
convolution with rescaled weights and a bias. Attacks differentiate through the deployed network hundreds of
times per image; on 32px networks the BatchNorms cost more than the convolutions (MobileNetV2 at width 0.5:
37% of a forward-backward), so folding them makes attacks faster (benchmarks/attack_speed.py prints how much)
without changing what is attacked: the embeddings and their input gradients agree up to float rounding.

:class:`RefreshedFold` is the same folded copy for a network that keeps training: traced once, its weights
recomputed from the live network's on every ``refresh()`` (adversarial training crafts against it every batch).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse, matches_module_pattern
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

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


# What torch.fx.experimental.optimization.fuse folds (a BatchNorm right after one of these, as its only user).
_PATTERNS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d),
             (nn.Linear, nn.BatchNorm1d))


def _folded_pairs(backbone: nn.Module) -> list[tuple[str, str]]:
    """``(layer name, BatchNorm name)`` of each pair that ``fuse`` folds in ``backbone``, by fuse's own rules."""
    traced = fx.symbolic_trace(backbone)
    modules = dict(traced.named_modules())
    pairs = []
    for pattern in _PATTERNS:
        for node in traced.graph.nodes:
            if (matches_module_pattern(pattern, node, modules) and len(node.args[0].users) == 1
                    and modules[node.target].track_running_stats):
                pairs.append((node.args[0].target, node.target))
    return pairs


class RefreshedFold:
    """A :func:`fold_batchnorm` copy of a network that keeps training, traced once and refreshed in place.

    ``refresh()`` copies the live network's current weights and statistics into the folded copy and returns it:
    every folded layer recomputed from its layer and BatchNorm (the same arithmetic as ``fuse``, so bit for bit
    what :func:`fold_batchnorm` would build now), every other parameter and buffer copied by name. Per training
    batch that is a few hundred tensor copies instead of a deep copy and a symbolic trace. The copy's
    parameters do not require gradients: attacks differentiate with respect to the input only.
    """

    def __init__(self, model: nn.Module):
        self.source = model
        self.module = fold_batchnorm(model).requires_grad_(False)
        sources = [m for m in model.modules() if isinstance(m, EmbeddingNet)]
        targets = [m for m in self.module.modules() if isinstance(m, EmbeddingNet)]
        self._layers = []  # (folded layer, source layer, source BatchNorm)
        for source, target in zip(sources, targets, strict=True):
            _forward_as(target, source)
            if not isinstance(target.backbone, fx.GraphModule):
                continue  # did not trace: left unfolded (fold_batchnorm warned)
            folded, original = dict(target.backbone.named_modules()), dict(source.backbone.named_modules())
            self._layers += [(folded[layer], original[layer], original[norm])
                             for layer, norm in _folded_pairs(source.backbone)]
        fused = {id(layer) for layer, _, _ in self._layers}
        # Everything but the folded layers' weights and biases is copied by name (fx keeps the names).
        self._names = [name for name in self.module.state_dict()
                       if not (name.rpartition(".")[2] in ("weight", "bias")
                               and id(self.module.get_submodule(name.rpartition(".")[0])) in fused)]
        built = {name: tensor.clone() for name, tensor in self.module.state_dict().items()}
        refreshed = self.refresh().state_dict()
        if built.keys() != refreshed.keys() or not all(torch.equal(built[k], refreshed[k]) for k in built):
            raise RuntimeError(f"RefreshedFold: refreshing does not rebuild fuse's folded copy of "
                               f"{type(model).__name__}; use fold_batchnorm per call instead")

    def refresh(self) -> nn.Module:
        """The folded copy, with the live network's current weights and statistics."""
        if self.source.training:
            raise ValueError("RefreshedFold.refresh: the model is in train mode, where BatchNorm uses batch "
                             "statistics and cannot be folded; refresh inside eval mode")
        current = self.source.state_dict()
        mine = self.module.state_dict()
        with torch.no_grad():
            for name in self._names:
                mine[name].copy_(current[name])
            for folded, layer, norm in self._layers:
                fuse_weights = fuse_linear_bn_weights if isinstance(layer, nn.Linear) else fuse_conv_bn_weights
                weight, bias = fuse_weights(layer.weight, layer.bias, norm.running_mean, norm.running_var,
                                            norm.eps, norm.weight, norm.bias)
                folded.weight.copy_(weight)
                folded.bias.copy_(bias)
        return self.module


def _forward_as(copy_net: nn.Module, net: nn.Module) -> None:
    """Make a forward of ``copy_net`` run ``net``'s forward hooks, as a forward of ``net`` would.

    The folded copy stands in for the network it was made from, so whoever watches that network must see its
    passes: the trainer's :class:`eatlib.train.ForwardCounter` counts the crafting steps as training compute. A
    deep copy would instead carry copies of the hooks, each feeding a copy of its owner (a counter nobody reads).
    The hooks are looked up at every call, so watchers registered after the copy was made are seen too.
    """
    copy_net._forward_hooks.clear()

    def run_hooks(_module, args, output):
        for hook in list(net._forward_hooks.values()):
            result = hook(net, args, output)
            output = output if result is None else result
        return output

    copy_net.register_forward_hook(run_hooks)
