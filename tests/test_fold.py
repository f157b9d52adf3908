"""fold_batchnorm: the same function and input gradients without BatchNorm, the original untouched, and the
robustness evaluation attacking a folded copy to the same result."""

import warnings

import pytest
import torch
from torch import nn

from eatlib.attacks import HEADLINE, build_attack
from eatlib.data import load_splits
from eatlib.defenses import build_inference
from eatlib.evaluate import evaluate_robustness
from eatlib.models import EmbeddingNet, Ensemble, build_model, fold_batchnorm

PROFILES = {
    "cnn4": {},
    "resnet18": {"width": 16},
    "mobilenet_v2": {"width_mult": 0.5, "max_blocks": 1, "last_conv": True},
}


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so that folding has something to fold."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def value_and_input_grad(model, x):
    x = x.clone().requires_grad_(True)
    z = model(x)
    (grad,) = torch.autograd.grad(z[:, :8].sum() - z[:, 8:].pow(2).sum(), x)
    return z.detach(), grad


@pytest.mark.parametrize("arch", sorted(PROFILES))
def test_folded_network_has_no_batchnorm_and_the_same_embeddings_and_input_gradients(arch):
    model = trained_looking(build_model(arch, embedding_dim=32, **PROFILES[arch]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert batchnorms(model) > 0 and batchnorms(folded) == 0
    assert not folded.training and folded.config == model.config
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    z, grad = value_and_input_grad(model, x)
    z_folded, grad_folded = value_and_input_grad(folded, x)
    torch.testing.assert_close(z_folded, z, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_folded, grad, atol=1e-5, rtol=1e-3)
    # The original is untouched: same modules, same weights, same mode.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training


def test_folds_inside_ensembles_and_randomised_defenses():
    members = [trained_looking(build_model("cnn4", embedding_dim=16), seed=s) for s in range(3)]
    ensemble = Ensemble(members).eval()
    defended = build_inference("randomization", ensemble).eval()
    folded = fold_batchnorm(defended)
    assert batchnorms(defended) == 12 and batchnorms(folded) == 0
    assert folded.randomized
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    expected = defended(x)
    torch.manual_seed(3)  # same random resize-and-pad draws
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-4)


def test_train_mode_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"train mode.*model\.eval\(\)"):
        fold_batchnorm(build_model("cnn4", embedding_dim=8).train())


class BranchyBackbone(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.mean() > 100:
            y = -y
        return y.mean((2, 3))


def test_an_untraceable_backbone_stays_unfolded_with_a_warning():
    model = EmbeddingNet(BranchyBackbone(), 4, 8, {"arch": "branchy"}).eval()
    with pytest.warns(UserWarning, match="does not trace"):
        folded = fold_batchnorm(model)
    assert batchnorms(folded) == 1
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(folded(x), model(x))


def test_robustness_evaluation_attacks_a_folded_copy_to_the_same_result():
    model = trained_looking(build_model("resnet18", embedding_dim=32, width=16))
    test = load_splits("glyphs", root="/nonexistent-so-generated-in-memory", num_classes=12,
                       images_per_class=20, val_fraction=0.0).test
    spec = {**HEADLINE, "steps": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the profile's networks fold without a warning
        folded_run = evaluate_robustness(model, test, [spec], subset=120, progress=False)
    plain_run = evaluate_robustness(model, test, [spec], subset=120, progress=False, fold=False)
    assert batchnorms(model) > 0  # the caller's model is not replaced
    for metric in ("nmi", "ari", "recall@1"):
        assert folded_run["clean"][metric] == pytest.approx(plain_run["clean"][metric], abs=1e-6)
        assert folded_run["attacks"][spec["name"]][metric] == pytest.approx(
            plain_run["attacks"][spec["name"]][metric], abs=0.02)
    # One sign step from the same start: the same step except where a gradient component is within rounding of
    # zero. Over several steps such rare flips send the iterates apart, so there compare what the attack reached.
    x = torch.stack([test[i][0] for i in range(32)])
    with torch.no_grad():
        clean = model(x)
    index, labels = torch.arange(32), torch.arange(32) % 4
    adversarial, reached = {}, {}
    for name, net in (("plain", model), ("folded", fold_batchnorm(model))):
        one_step = build_attack({**spec, "steps": 1}, net, clean_embeddings=clean, labels=labels, seed=0)
        adversarial[name] = one_step(x, index)
        attack = build_attack(spec, net, clean_embeddings=clean, labels=labels, seed=0)
        objective = attack.objective.batch(index, x.device)
        with torch.no_grad():
            reached[name] = (objective(model(attack(x, index))) - objective(clean)).mean().item()
    differing = (adversarial["plain"] - adversarial["folded"]).abs().gt(1e-4).float().mean().item()
    assert differing < 0.002
    assert reached["plain"] > 0 and reached["folded"] == pytest.approx(reached["plain"], rel=0.05)


def _train_a_little(model: nn.Module, steps: int = 2, seed: int = 4) -> None:
    """A few optimizer steps in train mode: weights and BatchNorm statistics move."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.rand(8, 3, 32, 32, generator=gen)).pow(3).sum().backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("arch", sorted(PROFILES))
def test_a_refreshed_fold_is_bit_for_bit_a_fresh_fold_after_training(arch):
    from eatlib.models import RefreshedFold

    model = trained_looking(build_model(arch, embedding_dim=32, **PROFILES[arch]))
    cached = RefreshedFold(model)
    first = cached.module
    stale = {k: v.clone() for k, v in first.state_dict().items()}
    _train_a_little(model)
    refreshed, fresh = cached.refresh(), fold_batchnorm(model)
    assert refreshed is first  # the same copy, not a new trace
    assert sum(not torch.equal(stale[k], v) for k, v in fresh.state_dict().items()) > len(stale) // 2
    assert refreshed.state_dict().keys() == fresh.state_dict().keys()
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(refreshed.state_dict()[name], tensor), name
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(refreshed(x), fresh(x))
    assert not any(p.requires_grad for p in refreshed.parameters())


def test_a_refreshed_fold_follows_every_member_of_an_ensemble_and_refuses_train_mode():
    from eatlib.models import RefreshedFold

    ensemble = Ensemble([trained_looking(build_model("cnn4", embedding_dim=16), seed=s) for s in range(2)]).eval()
    cached = RefreshedFold(ensemble)
    stale = {k: v.clone() for k, v in cached.module.state_dict().items()}
    _train_a_little(ensemble)
    refreshed = cached.refresh().state_dict()
    fresh = fold_batchnorm(ensemble).state_dict()
    assert all(torch.equal(refreshed[k], fresh[k]) for k in fresh)
    assert sum(not torch.equal(stale[k], fresh[k]) for k in fresh) > len(fresh) // 2  # training moved them
    ensemble.train()
    with pytest.raises(ValueError, match="train mode.*eval mode"):
        cached.refresh()
