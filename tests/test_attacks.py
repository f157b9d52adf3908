"""The attack engine on a tiny random network: budgets, [0,1], eps = 0, objectives, restarts, EOT, specs, and
the promise never to touch the model's mode or parameters. (Attack strength on a trained model:
test_robustness.py.)"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyAnchorLoss
from torch import nn

from eatlib.attacks import (
    CW,
    FGSM,
    HEADLINE,
    MIFGSM,
    PGD,
    Centroid,
    DMLLoss,
    EmbeddingShift,
    SoftAssignment,
    SpecError,
    UniformNoise,
    build_attack,
    eps_sweep,
    validate_spec,
    validate_suite,
    value_and_grad,
)


class TinyNet(nn.Module):
    """[B,3,S,S] in [0,1] -> L2-normalised [B,8]; BatchNorm and Dropout make train/eval mode matter."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(8, 8)

    def forward(self, x):
        h = self.drop(F.relu(self.bn(self.conv(x - 0.5)))).mean((2, 3))
        return F.normalize(self.head(h), dim=1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyNet().eval()
    labels = np.repeat(np.arange(4), 6)
    # Images with saturated pixels (0 and 1) so the [0,1] clip matters.
    images = torch.rand(len(labels), 3, 8, 8).mul_(1.4).sub_(0.2).clamp_(0, 1)
    with torch.no_grad():
        clean = model(images)
    return model, images, labels, clean


def _objectives(clean, labels):
    return {
        "embedding_shift": EmbeddingShift().prepare(clean, labels),
        "centroid_nearest": Centroid("nearest").prepare(clean, labels),
        "centroid_random": Centroid("random", margin=0.5).prepare(clean, labels),
        "centroid_pull": Centroid("nearest", candidates=2, push=0.0).prepare(clean, labels),
        "soft_assignment": SoftAssignment(0.1).prepare(clean, labels),
        "dml_loss": DMLLoss().prepare(clean, labels),
    }


def _attacks(model, objective, eps):
    return [
        FGSM(model, objective, eps=eps),
        FGSM(model, objective, eps=eps, norm="l2", random_start=True),
        PGD(model, objective, eps=eps, steps=3),
        PGD(model, objective, eps=eps, steps=3, norm="l2", restarts=2),
        MIFGSM(model, objective, eps=eps, steps=3),
        CW(model, objective, eps=eps, steps=3, lr=0.1, c=10.0),
        UniformNoise(model, objective, eps=eps),
        UniformNoise(model, objective, eps=eps, norm="l2"),
    ]


@pytest.mark.parametrize("eps", [0.0, 8 / 255, 0.5])
def test_every_output_is_inside_the_budget_and_in_0_1(setup, eps):
    model, images, labels, clean = setup
    index = torch.arange(len(images))
    objectives = _objectives(clean, labels)
    # Every optimiser with one objective, every objective with PGD.
    attacks = _attacks(model, objectives.pop("centroid_random"), eps)
    attacks += [PGD(model, objective, eps=eps, steps=2) for objective in objectives.values()]
    for attack in attacks:
        adversarial = attack(images, index)
        delta = (adversarial - images).flatten(1)
        assert adversarial.shape == images.shape and adversarial.dtype == images.dtype
        assert adversarial.min() >= 0 and adversarial.max() <= 1, attack
        bound = delta.norm(dim=1) if attack.norm == "l2" else delta.abs().amax(1)
        assert bound.max() <= eps + 1e-6, attack
        if eps == 0:
            assert torch.equal(adversarial, images), attack
        elif not isinstance(attack, CW):
            assert bound.max() > 0.5 * eps, attack  # it does move


def test_the_model_mode_parameters_buffers_and_grads_are_untouched(setup):
    _, images, labels, _ = setup
    torch.manual_seed(1)
    for training in (False, True):
        model = TinyNet(dropout=0.1).train(training)
        with torch.no_grad():
            clean = model.eval()(images)
        model.train(training)
        objective = Centroid("random").prepare(clean, labels)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for attack in _attacks(model, objective, 8 / 255):
            attack(images, torch.arange(len(images)))
        assert model.training is training and all(m.training is training for m in model.modules())
        assert all(p.grad is None for p in model.parameters())
        after = model.state_dict()
        for key, value in before.items():
            if training and key.startswith("bn.") and key != "bn.weight" and key != "bn.bias":
                continue  # train-mode BatchNorm updates its running statistics: the caller's choice
            assert torch.equal(after[key], value), key


def test_attacks_raise_their_objective_above_clean_and_pgd_beats_fgsm(setup):
    model, images, labels, clean = setup
    index = torch.arange(len(images))
    for name, objective in _objectives(clean, labels).items():
        f = objective.batch(index)
        with torch.no_grad():
            start = f(model(images)).sum()
            fgsm = f(model(FGSM(model, objective, eps=16 / 255)(images, index))).sum()
            pgd = f(model(PGD(model, objective, eps=16 / 255, steps=10)(images, index))).sum()
        assert fgsm > start and pgd > fgsm, name


def test_clean_values_and_definitions_of_the_objectives(setup):
    _, _, labels, clean = setup
    index = torch.arange(len(clean))
    objectives = _objectives(clean, labels)
    torch.testing.assert_close(objectives["embedding_shift"](clean, index), torch.zeros(len(clean)))
    torch.testing.assert_close(objectives["soft_assignment"](clean, index), torch.zeros(len(clean)),
                               atol=1e-5, rtol=0)
    # Centroid: d(z, own) - d(z, target) exactly, own = clean k-means cluster, target another centre.
    for key in ("centroid_nearest", "centroid_random", "centroid_pull"):
        objective = objectives[key]
        state = objective._state
        centres, own, target = state["centres"], state["assignment"], state["target"]
        d = torch.cdist(clean, centres).pow(2)
        assert torch.equal(own, d.argmin(1)) and not torch.any(target == own)
        expected = objective.push * d[index, own] - d[index, target]
        if objective.margin is not None:
            expected = expected.clamp(max=objective.margin)
        torch.testing.assert_close(objective(clean, index), expected, atol=1e-5, rtol=0)
        assert (objective(clean, index) < 0).all()  # clean samples sit nearer their own centre
    d_other = torch.cdist(clean, objectives["centroid_nearest"]._state["centres"])
    d_other[index, objectives["centroid_nearest"]._state["assignment"]] = math.inf
    assert torch.equal(objectives["centroid_nearest"]._state["target"], d_other.argmin(1))
    # candidates = 2: one of the two nearest other centres, not always the nearest.
    two_nearest = d_other.topk(2, largest=False).indices
    pull_target = objectives["centroid_pull"]._state["target"]
    assert (pull_target[:, None] == two_nearest).any(1).all() and not torch.equal(pull_target, two_nearest[:, 0])
    # Random targets are spread over the other centres, not all the nearest one.
    assert not torch.equal(objectives["centroid_random"]._state["target"], d_other.argmin(1))
    # dml_loss: the sum over the batch is Proxy-Anchor with class-mean proxies.
    reference = ProxyAnchorLoss(4, clean.shape[1])
    means = torch.stack([clean[labels == c].mean(0) for c in range(4)])
    reference.proxies.data.copy_(F.normalize(means, dim=1))
    values = objectives["dml_loss"](clean, index)
    torch.testing.assert_close(values.sum(), reference(clean, torch.as_tensor(labels)))


def test_objectives_are_bound_to_the_positions_given_by_index(setup):
    _, _, labels, clean = setup
    objective = Centroid("random").prepare(clean, labels)
    index = torch.tensor([5, 0, 17])
    torch.testing.assert_close(objective(clean[index], index), objective(clean, torch.arange(len(clean)))[index])
    with pytest.raises(IndexError):
        objective(clean[:2], torch.tensor([0, len(clean)]))
    with pytest.raises(RuntimeError, match="prepare"):
        Centroid().batch(index)
    with pytest.raises(ValueError, match="labels"):
        DMLLoss().prepare(clean)
    with pytest.raises(ValueError, match="n_clusters"):
        Centroid().prepare(clean)


def test_samples_are_attacked_independently_of_their_batch(setup):
    # Per-sample objectives and an eval-mode model: attacking a batch equals attacking each image alone.
    model, images, labels, clean = setup
    attack = PGD(model, Centroid().prepare(clean, labels), eps=8 / 255, steps=4, random_start=False)
    together = attack(images[:6], torch.arange(6))
    alone = torch.cat([attack(images[i : i + 1], torch.tensor([i])) for i in range(6)])
    torch.testing.assert_close(together, alone)


def test_channels_last_iterates_give_the_same_attack_in_the_input_layout(setup):
    model, images, labels, clean = setup
    objective = Centroid("random").prepare(clean, labels)
    index = torch.arange(len(images))
    for attack, options in ((PGD, {"steps": 3}), (MIFGSM, {"steps": 3}), (FGSM, {}), (CW, {"steps": 3})):
        a = attack(model, objective, channels_last=True, **options)(images, index)
        b = attack(model, objective, channels_last=False, **options)(images, index)
        assert a.is_contiguous() and b.is_contiguous()
        # Sign steps flip where a gradient entry is ~0 in one layout's rounding and not the other's: rare.
        assert (a - b).abs().gt(1e-5).float().mean() < 0.01, attack


def test_restarts_keep_the_best_perturbation_per_sample(setup):
    model, images, labels, clean = setup
    objective = Centroid("random").prepare(clean, labels)
    index = torch.arange(len(images))
    f = objective.batch(index)
    one = PGD(model, objective, eps=4 / 255, steps=2, seed=3)(images, index)
    three = PGD(model, objective, eps=4 / 255, steps=2, restarts=3, seed=3)(images, index)
    with torch.no_grad():
        assert (f(model(three)) >= f(model(one)) - 1e-6).all()
        assert (f(model(three)) > f(model(one)) + 1e-6).any()


def test_the_same_seed_gives_the_same_attack(setup):
    model, images, labels, clean = setup
    objective = Centroid("random").prepare(clean, labels)
    index = torch.arange(len(images))
    a = PGD(model, objective, steps=2, seed=7)(images, index)
    b = PGD(model, objective, steps=2, seed=7)(images, index)
    c = PGD(model, objective, steps=2, seed=8)(images, index)
    assert torch.equal(a, b) and not torch.equal(a, c)


class NoisyNet(nn.Module):
    """A randomised defence: Gaussian noise on the input at every call."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.1 * torch.randn_like(x))


def test_eot_averages_values_and_gradients_over_the_randomness(setup):
    model, images, labels, clean = setup
    noisy = NoisyNet(model)
    f = EmbeddingShift().prepare(clean, labels).batch(torch.arange(len(images)))
    torch.manual_seed(0)
    value, grad = value_and_grad(noisy, f, images, samples=4)
    torch.manual_seed(0)
    singles = [value_and_grad(noisy, f, images) for _ in range(4)]
    torch.testing.assert_close(value, torch.stack([v for v, _ in singles]).mean(0))
    torch.testing.assert_close(grad, torch.stack([g for _, g in singles]).mean(0))
    # A deterministic model: EOT changes nothing.
    torch.testing.assert_close(value_and_grad(model, f, images, samples=3)[1], value_and_grad(model, f, images)[1])


def test_bad_inputs_are_errors_that_say_what_to_do(setup):
    model, images, labels, clean = setup
    objective = Centroid().prepare(clean, labels)
    attack = PGD(model, objective, steps=1)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        attack(images * 255, torch.arange(len(images)))
    with pytest.raises(ValueError, match="index"):
        attack(images, torch.arange(3))
    with pytest.raises(ValueError, match="norm"):
        MIFGSM(model, objective, norm="l2")
    with pytest.raises(ValueError, match="target"):
        Centroid(target="farthest")


def test_specs_are_validated_and_completed():
    spec = validate_spec(HEADLINE)
    assert spec["eps"] == pytest.approx(8 / 255) and spec["steps"] == 20 and spec["margin"] is None
    assert validate_spec({"eps": "4/255", "optimizer": "fgsm"})["eps"] == pytest.approx(4 / 255)
    assert validate_spec({"optimizer": "cw"})["norm"] == "l2"
    assert validate_spec({"norm": "l2"})["eps"] == 0.5
    assert validate_spec({"optimizer": "pgd", "objective": "centroid", "target": "random", "eps": 2 / 255})[
        "name"] == "pgd-linf-centroid-random-eps2/255"
    with pytest.raises(SpecError, match=r"'decay'.*allowed keys: \[.*'alpha'"):
        validate_spec({**HEADLINE, "decay": 0.9})  # a MI-FGSM key on PGD would be silently ignored
    with pytest.raises(SpecError, match=r"'target' must be one of \['nearest', 'random'\]"):
        validate_spec({**HEADLINE, "target": "farthest"})
    with pytest.raises(SpecError, match=r"'optimizer' must be one of"):
        validate_spec({"optimizer": "deepfool"})
    with pytest.raises(SpecError, match="'steps'"):
        validate_spec({**HEADLINE, "steps": 0})
    with pytest.raises(SpecError, match="'steps' must be an integer"):
        validate_spec({**HEADLINE, "steps": 2.5})
    with pytest.raises(SpecError, match="'eps'"):
        validate_spec({**HEADLINE, "eps": "eight"})
    with pytest.raises(SpecError, match="'norm'"):
        validate_spec({"optimizer": "mifgsm", "norm": "l2"})
    with pytest.raises(SpecError, match="'candidates'"):
        validate_spec({**HEADLINE, "target": "random", "candidates": 3})
    with pytest.raises(SpecError, match="'push'"):
        validate_spec({**HEADLINE, "push": 2.0})
    with pytest.raises(SpecError, match="unique"):
        validate_suite([HEADLINE, HEADLINE])


def test_eps_sweep_keeps_the_step_to_eps_ratio():
    sweep = eps_sweep(HEADLINE, ["1/255", 16 / 255])
    assert [s["name"] for s in sweep] == ["pgd_centroid_random@1/255", "pgd_centroid_random@16/255"]
    assert [s["alpha"] * 255 for s in sweep] == pytest.approx([0.25, 4.0])


def test_build_attack_follows_the_spec(setup):
    model, images, labels, clean = setup
    attack = build_attack({**HEADLINE, "steps": 2, "target": "random"}, model, clean_embeddings=clean,
                          labels=labels, seed=1)
    assert isinstance(attack, PGD) and attack.steps == 2 and attack.alpha == pytest.approx(2 / 255)
    assert attack.objective.target == "random" and attack.objective.prepared
    adversarial = attack(images, torch.arange(len(images)))
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6
    for name, cls in [("fgsm", FGSM), ("mifgsm", MIFGSM), ("cw", CW), ("noise", UniformNoise)]:
        assert isinstance(build_attack({"optimizer": name}, model), cls)
