"""Defenses: each trains and lowers its loss, attacks the right thing, validates its options."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from eatlib.attacks import EmbeddingShift
from eatlib.data import ClassBalancedBatchSampler
from eatlib.defenses import (
    INFERENCE_DEFENSES,
    Adversary,
    AttackOptions,
    TrainingLoss,
    build_inference,
    build_training,
)
from eatlib.defenses.adp import adp_regulariser
from eatlib.defenses.mixup import mixed_loss, weighted_proxy_anchor
from eatlib.defenses.trades import TRADESOptions
from eatlib.losses import build_loss
from eatlib.models import build_model
from eatlib.params import ConfigError, LossConfig, Params, TrainConfig, from_dict
from eatlib.train import Batch, ForwardCounter, build_optimizer

SIZE, DIM, CLASSES, PER_CLASS = 16, 16, 6, 8
# Small budgets keep the inner maximisation cheap; no warm-up, so no trainer epoch is needed.
ATTACK = {"eps": "8/255", "step_size": "4/255", "steps": 2, "warmup_epochs": 0}


class TinyImages(torch.utils.data.Dataset):
    """Classes of flat-coloured 16px images with noise: learnable in a few steps."""

    def __init__(self, num_classes=CLASSES, per_class=PER_CLASS, seed=0):
        rng = np.random.default_rng(seed)
        colours = rng.uniform(0, 1, size=(num_classes, 3, 1, 1))
        labels = np.repeat(np.arange(num_classes), per_class)
        images = colours[labels] + rng.normal(0, 0.15, size=(len(labels), 3, SIZE, SIZE))
        self.images = torch.as_tensor(np.clip(images, 0, 1) * 255, dtype=torch.uint8)
        self.labels, self.num_classes = labels.astype(np.int64), num_classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255, int(self.labels[i])


def make_member():
    return build_model("cnn4", embedding_dim=DIM, image_size=SIZE)


def setup_for(name, options=None, *, seed=0, data=None, craft_folded=False):
    data = data or TinyImages()
    torch.manual_seed(seed)
    return build_training(name, options, make_member=make_member, num_classes=data.num_classes,
                          num_samples=len(data), loss_cfg=LossConfig(), seed=seed, craft_folded=craft_folded)


def batches(data, batch_size=24, samples_per_class=4, epoch=0, seed=0):
    """The trainer's class-balanced batches of ``data`` for one epoch."""
    sampler = ClassBalancedBatchSampler(data.labels, batch_size, samples_per_class, seed=seed)
    sampler.set_epoch(epoch)
    labels = torch.as_tensor(data.labels)
    for indices in sampler:
        indices = torch.as_tensor(indices, dtype=torch.long)
        yield Batch(data.images[indices].float() / 255, labels[indices], indices)


def optimizer_for(setup, lr=3e-3):
    cfg = TrainConfig(lr=lr, batch_size=24, samples_per_class=4)
    return build_optimizer(setup.model, setup.criterion, cfg)


def train_steps(setup, data, steps, lr=3e-3):
    """Run ``steps`` optimisation steps of the defense's step function on ``data``; returns the losses."""
    optimizer, losses, epoch = optimizer_for(setup, lr), [], 0
    setup.model.train()
    while len(losses) < steps:
        for batch in batches(data, epoch=epoch):
            loss = setup.step(setup.model, setup.criterion, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
        epoch += 1
    return losses


# ---------------------------------------------------------------- every training defense learns

TRAINING_CASES = {
    "standard": None,
    "pgd_at": {"attack": ATTACK},
    "pgd_at_clean_term": {"attack": ATTACK, "clean_weight": 0.5},
    "trades": {"attack": ATTACK, "beta": 1.0},
    "iat": {"attack": ATTACK},
    "adp": {"members": 2},
    "adp_adversarial": {"members": 2, "adversarial": True, "attack": ATTACK},
    "eat": {"members": 2, "attack": ATTACK},
}


@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_each_training_defense_lowers_its_loss(case):
    name = case.split("_clean")[0].split("_adversarial")[0]
    data = TinyImages()
    setup = setup_for(name, TRAINING_CASES[case], data=data)
    probe = next(batches(data, epoch=99))

    def probe_loss():
        torch.manual_seed(0)  # the same random starts and mixup draws before and after
        return setup.step(setup.model, setup.criterion, probe).item()

    setup.model.train()
    before = probe_loss()
    train_steps(setup, data, steps=12)
    assert probe_loss() < 0.8 * before


def test_setup_meta_names_the_defense_and_its_options():
    setup = setup_for("pgd_at", {"attack": ATTACK})
    assert setup.meta["defense"] == "pgd_at"
    assert setup.meta["defense_options"]["attack"]["steps"] == 2
    assert setup.meta["defense_options"]["attack"]["eps"] == pytest.approx(8 / 255)


# ---------------------------------------------------------------- the inner maximisation


WARMUP = {**ATTACK, "warmup_epochs": 3}
ADVERSARIAL_CASES = {"pgd_at": {"attack": WARMUP}, "trades": {"attack": WARMUP}, "iat": {"attack": WARMUP},
                     "adp": {"members": 2, "adversarial": True, "attack": WARMUP},
                     "eat": {"members": 2, "attack": WARMUP}}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL_CASES))
def test_adversarial_steps_report_the_eps_of_each_epoch_for_the_history(name):
    step = setup_for(name, ADVERSARIAL_CASES[name]).step
    reported = []
    for epoch in range(5):
        step.set_epoch(epoch)
        reported.append(step.epoch_info())
    ramp = [min(1, (e + 1) / 4) for e in range(5)]  # k = 3: quarters, then full
    assert [r["eps"] for r in reported] == pytest.approx([8 / 255 * f for f in ramp])
    assert [r["step_size"] for r in reported] == pytest.approx([4 / 255 * f for f in ramp])
    assert step.adversary.eps() == pytest.approx((8 / 255, 4 / 255))  # what the attack of epoch 4 uses


def test_a_step_without_an_attack_reports_no_eps():
    assert setup_for("adp", {"members": 2}).step.epoch_info() == {}
    assert not hasattr(setup_for("standard").step, "epoch_info")



def test_training_loss_objective_drives_the_engine_up_the_loss():
    data = TinyImages()
    setup = setup_for("standard", data=data)
    batch = next(batches(data))
    options = AttackOptions(eps=8 / 255, step_size=2 / 255, steps=5, warmup_epochs=0)
    adversarial = Adversary(options)(setup.model, TrainingLoss(setup.criterion, batch.labels), batch.images)
    assert (adversarial - batch.images).abs().max() <= 8 / 255 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    with torch.no_grad():
        setup.model.eval()
        clean = setup.criterion(setup.model(batch.images), batch.labels)
        attacked = setup.criterion(setup.model(adversarial), batch.labels)
    assert attacked > clean + 0.05


def test_attack_runs_in_eval_mode_and_restores_each_module_flag():
    data = TinyImages()
    setup = setup_for("standard", data=data)
    model = setup.model
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    frozen.eval()  # as the trainer's freeze_bn leaves it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    hook = model.register_forward_hook(lambda module, i, o: seen.append(module.training))
    batch = next(batches(data))
    Adversary(AttackOptions(steps=3, warmup_epochs=0))(model, TrainingLoss(setup.criterion, batch.labels),
                                                         batch.images)
    hook.remove()
    assert seen and not any(seen)  # every attack pass in eval mode
    for key, value in model.state_dict().items():  # BatchNorm running statistics untouched
        torch.testing.assert_close(value, before[key], msg=key)
    assert model.training and not frozen.training


def test_eps_warm_up_ramps_linearly_and_needs_the_epoch():
    options = AttackOptions(eps=8 / 255, step_size=2 / 255, warmup_epochs=3)
    adversary = Adversary(options)
    with pytest.raises(RuntimeError, match="set_epoch"):
        adversary.eps()
    ramps = []
    for epoch in range(6):
        adversary.set_epoch(epoch)
        eps, step = adversary.eps()
        ramps.append(eps * 255)
        assert step == pytest.approx(eps / 4)
    assert ramps == pytest.approx([2, 4, 6, 8, 8, 8])


def test_steps_forward_set_epoch_to_their_adversary():
    for name in ("pgd_at", "trades", "iat", "adp", "eat"):
        setup = setup_for(name, {"members": 2} if name in ("adp", "eat") else None)
        setup.step.set_epoch(2)
        assert setup.step.adversary.epoch == 2, name


def test_trades_maximises_the_embedding_shift_from_the_clean_embeddings(monkeypatch):
    data = TinyImages()
    setup = setup_for("trades", {"attack": ATTACK}, data=data)
    calls = []

    def spy(self, model, objective, images):
        calls.append(objective)
        return images

    monkeypatch.setattr(Adversary, "__call__", spy)
    batch = next(batches(data))
    with torch.no_grad():
        clean = setup.model.eval()(batch.images)  # before the step's training pass moves the BN statistics
    setup.model.train()
    setup.step(setup.model, setup.criterion, batch)
    (objective,) = calls
    assert isinstance(objective, EmbeddingShift)
    torch.testing.assert_close(objective._state["clean"], clean)


@pytest.mark.parametrize("craft_folded", [False, True], ids=["crafted-live", "crafted-folded"])
def test_forward_backward_images_counted_per_defense(craft_folded):
    """The cost the tables report: PGD-K adversarial training spends (K + 1) passes per image; EAT's default
    (complement split, each_member transfer) K passes plus one per member that owns the image. Crafting against
    the BatchNorm-folded copy (``craft_folded``) costs the same passes and must count them: it once did not."""
    data = TinyImages()
    batch = next(batches(data))
    size, steps = len(batch.images), ATTACK["steps"]
    expected = {
        "standard": size,
        "pgd_at": (steps + 1) * size,
        "eat": steps * size + 2 * size,  # 3 members, complement: every image is owned by 2 of them
    }
    for name, images in expected.items():
        setup = setup_for(name, None if name == "standard" else {"attack": ATTACK}, data=data,
                          craft_folded=craft_folded)
        counter = ForwardCounter(setup.model)
        setup.model.train()
        for _ in range(2):  # the second step crafts against the folded copy made in the first
            setup.step(setup.model, setup.criterion, batch)
        counter.close()
        assert counter.images == 2 * images, name


# ---------------------------------------------------------------- mixup for proxy losses


def test_weighted_proxy_anchor_with_one_hot_weights_is_proxy_anchor():
    torch.manual_seed(0)
    loss = build_loss("proxy_anchor", 5, 8)
    z = F.normalize(torch.randn(12, 8), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])  # class 4 has no positives in the batch
    one_hot = F.one_hot(labels, 5).float()
    weighted = weighted_proxy_anchor(z, one_hot, 1 - one_hot, loss.proxies, margin=loss.margin, alpha=loss.alpha)
    torch.testing.assert_close(weighted, loss(z, labels))
    torch.testing.assert_close(mixed_loss(loss, z, labels, labels, 0.3), loss(z, labels))  # same-class mixes


def test_mixed_proxy_anchor_places_a_mix_between_its_two_proxies_by_lam():
    loss = build_loss("proxy_anchor", 3, 3)
    with torch.no_grad():
        loss.proxies.copy_(torch.eye(3))
    a, b = torch.tensor([0]), torch.tensor([1])

    def at(t):  # the embedding a fraction t of the way from proxy 0 to proxy 1
        return F.normalize(torch.tensor([[1 - t, t, 0.0]]), dim=1)

    ours = lambda t, lam: mixed_loss(loss, at(t), a, b, lam)
    assert ours(0.5, 0.5) < ours(0.0, 0.5) - 1 and ours(0.5, 0.5) < ours(1.0, 0.5) - 1
    assert ours(0.1, 0.9) < ours(0.9, 0.9) - 0.3  # the larger share pulls harder
    # Mixing two plain Proxy-Anchor losses makes the mix a negative of each class: the midpoint is the worst.
    plain = lambda t, lam: lam * loss(at(t), a) + (1 - lam) * loss(at(t), b)
    assert plain(0.5, 0.5) > plain(0.0, 0.5)


def test_mixed_loss_falls_back_to_mixing_losses_without_proxies():
    loss = build_loss("contrastive", 4, 8)
    z = F.normalize(torch.randn(8, 8), dim=1)
    a, b = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.tensor([1, 1, 0, 0, 3, 3, 2, 2])
    torch.testing.assert_close(mixed_loss(loss, z, a, b, 0.25), 0.25 * loss(z, a) + 0.75 * loss(z, b))


# ---------------------------------------------------------------- ADP


def test_adp_regulariser_rewards_diverse_non_maximal_predictions():
    labels = torch.tensor([0, 1])
    same = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]).unsqueeze(1).repeat(1, 2, 1)  # [B, M=2, C]
    diverse = torch.stack([torch.tensor([[0.7, 0.29, 0.01], [0.7, 0.01, 0.29]]),
                           torch.tensor([[0.01, 0.8, 0.19], [0.19, 0.8, 0.01]])])
    entropy_same, det_same = adp_regulariser(same, labels, offset=1e-6)
    entropy_div, det_div = adp_regulariser(diverse, labels, offset=1e-6)
    assert det_div > det_same + 5  # identical members: Gram matrix singular up to the offset
    assert entropy_same == pytest.approx(-(same[:, 0] * same[:, 0].log()).sum(1).mean().item())


def test_adp_needs_a_proxy_loss():
    with pytest.raises(ConfigError, match="proxy"):
        build_training("adp", {"members": 2}, make_member=make_member, num_classes=CLASSES, num_samples=48,
                       loss_cfg=LossConfig(name="contrastive", options={}))


# ---------------------------------------------------------------- options are validated


@pytest.mark.parametrize(
    ("name", "options", "key"),
    [
        ("eat", {"members": 1}, "defenses.eat.members"),
        ("eat", {"split": "halves"}, "defenses.eat.split"),
        ("eat", {"transfer": "moco"}, "defenses.eat.transfer"),
        ("eat", {"aggregate": 3}, "defenses.eat.aggregate"),
        ("eat", {"aggregate": "max"}, "defenses.eat.aggregate"),
        ("eat", {"attack": {"eps": -0.1}}, "defenses.eat.attack.eps"),
        ("pgd_at", {"attack": {"steps": 0}}, "defenses.pgd_at.attack.steps"),
        ("pgd_at", {"attack": {"norm": "l1"}}, "defenses.pgd_at.attack.norm"),
        ("pgd_at", {"clean_weight": 2}, "defenses.pgd_at.clean_weight"),
        ("pgd_at", {"epsilon": 0.1}, "defenses.pgd_at"),
        ("trades", {"beta": -1}, "defenses.trades.beta"),
        ("iat", {"mixup_alpha": 0}, "defenses.iat.mixup_alpha"),
        ("adp", {"members": 1}, "defenses.adp.members"),
        ("adp", {"adversarial": "yes"}, "defenses.adp.adversarial"),
    ],
)
def test_bad_training_options_name_the_key(name, options, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        build_training(name, options, make_member=make_member, num_classes=CLASSES, num_samples=48)


@pytest.mark.parametrize(
    ("name", "options", "key"),
    [
        ("input_transform", {"transforms": ["median"]}, "defenses.input_transform.transforms"),
        ("input_transform", {"bits": 0}, "defenses.input_transform.bits"),
        ("randomization", {"min_scale": 1.5}, "defenses.randomization.min_scale"),
        ("bart", {"num_transforms": 99}, "defenses.bart.num_transforms"),
        ("bart", {"transforms": ["swirl"]}, "defenses.bart.transforms"),
        ("mixup_inference", {"lam": 0}, "defenses.mixup_inference.lam"),
    ],
)
def test_bad_inference_options_name_the_key(name, options, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        build_inference(name, make_member(), options)


def test_unknown_defense_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="pgd_at"):
        build_training("madry", None, make_member=make_member, num_classes=CLASSES, num_samples=48)
    with pytest.raises(ConfigError, match="randomization"):
        build_inference("median_filter", make_member())


def test_defenses_section_of_params_yaml():
    section = yaml.safe_load(
        "eat: {members: 4, split: disjoint, transfer: ensemble, aggregate: 1, attack: {eps: 4/255}}\n"
        "pgd_at: {clean_weight: 0.5}\n"
    )
    shipped = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params = from_dict(Params, {**shipped, "defenses": section})
    eat = params.defense_options("eat")
    assert eat.members == 4 and eat.aggregate == 1 and eat.attack.eps == pytest.approx(4 / 255)
    # A subsection left out takes that defense's defaults.
    assert params.defense_options("pgd_at").clean_weight == 0.5 and params.defense_options("trades") == TRADESOptions()
    with pytest.raises(ConfigError, match=r"defenses: got 'eta'; allowed: subsections named after defenses"):
        from_dict(Params, {**shipped, "defenses": {"eta": {}}})
    with pytest.raises(ConfigError, match=re.escape("defenses.eat.members")):
        from_dict(Params, {**shipped, "defenses": {"eat": {"members": 1}}})


# ---------------------------------------------------------------- inference-time defenses


def _trained_like_model():
    torch.manual_seed(0)
    return make_member().eval()


@pytest.mark.parametrize("name", sorted(INFERENCE_DEFENSES))
def test_inference_defense_keeps_the_forward_contract(name):
    model = _trained_like_model()
    context = {"references": TinyImages(seed=3).images} if name == "mixup_inference" else {}
    defended = build_inference(name, model, None, **context)
    x = torch.rand(5, 3, SIZE, SIZE, requires_grad=True)
    z = defended(x)
    assert z.shape == (5, DIM) and defended.embedding_dim == DIM
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    # Attacks get a useful gradient through every defense (BPDA through the non-differentiable steps).
    (grad,) = torch.autograd.grad(z[:, 0].sum(), x)
    assert grad.abs().sum() > 0
    assert defended.config["inference_defense"] == name and defended.config["model"] == model.config
    # Randomised defenses are marked (evaluation uses EOT) and are random; deterministic ones are not.
    with torch.no_grad():
        again = defended(x)
    assert defended.randomized == (name != "input_transform")
    assert torch.allclose(z, again) != defended.randomized
    assert not model.training


def test_bit_depth_and_jpeg_transform_the_input_and_pass_gradients_straight_through():
    model = _trained_like_model()
    defended = build_inference("input_transform", model, {"transforms": ["bit_depth"], "bits": 2})
    x = torch.rand(3, 3, SIZE, SIZE, requires_grad=True)
    transformed = defended.transform(x)
    levels = torch.tensor([0, 1 / 3, 2 / 3, 1])
    assert (transformed.detach().reshape(-1, 1) - levels).abs().amin(1).max() < 1e-6
    (grad,) = torch.autograd.grad(transformed.sum(), x)
    torch.testing.assert_close(grad, torch.ones_like(x))
    jpeg_only = build_inference("input_transform", model, {"transforms": ["jpeg"], "jpeg_quality": 10})
    smooth = torch.full((2, 3, SIZE, SIZE), 0.5)
    torch.testing.assert_close(jpeg_only.transform(smooth), smooth, atol=2 / 255, rtol=0)
    noisy = torch.rand(2, 3, SIZE, SIZE)
    assert (jpeg_only.transform(noisy) - noisy).abs().mean() > 0.05  # quality 10 loses detail


def test_randomization_shrinks_and_pads_within_the_canvas():
    model = _trained_like_model()
    x = torch.rand(64, 3, SIZE, SIZE) * 0.5 + 0.5  # no black pixels of its own
    identity = build_inference("randomization", model, {"min_scale": 1.0})
    torch.testing.assert_close(identity.transform(x), x)
    shrunk = build_inference("randomization", model, {"min_scale": 0.5}).transform(x)
    black_rows = (shrunk.amax(dim=(1, 3)) == 0).sum(1)  # fully padded rows per image
    assert black_rows.max() >= 1 and black_rows.max() <= SIZE // 2
    assert len(torch.unique(black_rows)) > 1  # sizes drawn per image
    # Seeded: the same options give the same draws.
    again = build_inference("randomization", model, {"min_scale": 0.5}).transform(x)
    torch.testing.assert_close(shrunk, again)


def test_bart_applies_a_random_subset_of_distinct_transforms():
    model = _trained_like_model()
    defended = build_inference("bart", model, {"num_transforms": 3})
    draws = [defended.chosen(defended.generator(torch.device("cpu"))) for _ in range(20)]
    assert all(len(d) == 3 == len(set(d)) for d in draws)
    assert len({tuple(d) for d in draws}) > 5


def test_mixup_inference_with_lam_one_is_the_model():
    model = _trained_like_model()
    defended = build_inference("mixup_inference", model, {"lam": 1.0, "samples": 2},
                               references=TinyImages(seed=3).images)
    x = torch.rand(4, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(defended(x), model(x))
    with pytest.raises(ValueError, match="references"):
        build_inference("mixup_inference", model)
