"""EAT's further readings: ``others`` (a member never learns from examples crafted against itself), ``momentum``
(moving averages of the members craft), and the gradient-diversity penalty; their options, costs and checkpoints."""

from __future__ import annotations

import pytest
import torch
from test_defenses import ATTACK, TinyImages, batches, optimizer_for, setup_for, train_steps
from test_eat import RecordingStep, identify
from torch.func import functional_call

from eatlib.defenses import Adversary
from eatlib.defenses.eat import EATOptions, gradient_alignment
from eatlib.defenses.transfer import Averaged, Others, live_weights
from eatlib.params import ConfigError, from_dict
from eatlib.train import ForwardCounter

M = 3


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "options, named",
    [
        ({"transfer": "momentum", "momentum": 1.0}, "defenses.eat.momentum: got 1.0"),
        ({"transfer": "momentum", "momentum": -0.1}, "defenses.eat.momentum: got -0.1"),
        ({"transfer": "each_member", "momentum": 0.9}, "only transfer: momentum reads it"),
        ({"gradient_diversity": -1}, "defenses.eat.gradient_diversity: got -1"),
        ({"gradient_diversity": float("nan")}, "defenses.eat.gradient_diversity: got nan"),
        ({"transfer": "moco"}, "'momentum', 'none', 'others'"),  # the message lists the new readings
    ],
)
def test_new_options_are_validated_with_the_key_and_the_allowed_values(options, named):
    with pytest.raises(ConfigError, match="defenses.eat") as error:
        from_dict(EATOptions, options, "defenses.eat")
    assert named in str(error.value)


def test_new_options_parse_with_their_defaults():
    options = from_dict(EATOptions, {"transfer": "momentum", "momentum": "0"}, "defenses.eat")
    assert options.momentum == 0.0 and options.gradient_diversity == 0.0
    assert from_dict(EATOptions, {"transfer": "others"}, "x").momentum == 0.99


# ---------------------------------------------------------------- others


class TagAdversary:
    """Returns images tagged with the index of the attacked model (pixel value 0.1 * (index + 1)); ``models``
    maps a model (a member, or a member's moving average) to its index."""

    def __init__(self, members):
        self.members, self.calls = list(members), []

    def index(self, model):
        inner = model.member if isinstance(model, Averaged) else model
        return next(i for i, m in enumerate(self.members) if m is inner)

    def __call__(self, model, objective, images):
        self.calls.append((model, len(images)))
        return torch.full_like(images, 0.1 * (self.index(model) + 1))


def _sources(images):
    return (images[:, 0, 0, 0] * 10 - 1).round().long()


@pytest.mark.parametrize("members", [2, 3])
@pytest.mark.parametrize("split", ["complement", "disjoint", "bootstrap", "none"])
def test_others_never_gives_a_member_examples_crafted_against_itself(split, members):
    data = TinyImages()
    setup = setup_for("eat", {"members": members, "split": split, "transfer": "others", "attack": ATTACK},
                      data=data)
    nets, step = list(setup.model.members), setup.step
    spy = TagAdversary(nets)
    counts = torch.zeros(members, members)  # [trainee, source]
    crafted = needed = 0
    for epoch in range(3):
        for batch in batches(data, epoch=epoch):
            shares = step.shares(batch.indices)
            spy.calls.clear()
            adversarial = step.transfer.craft(spy, nets, setup.criterion, batch.images, batch.labels, shares)
            for m, (share, images) in enumerate(zip(shares, adversarial, strict=True)):
                assert images.shape == (len(share), *batch.images.shape[1:])
                sources = _sources(images)
                assert (sources != m).all(), (split, m)
                counts[m] += torch.bincount(sources, minlength=members).float()
            # Holders share an example where they can: one attack per sample, two at most.
            held = len(torch.unique(torch.cat(shares)))
            crafted += sum(n for _, n in spy.calls)
            needed += held
            assert held <= sum(n for _, n in spy.calls) <= 2 * held
            assert len(spy.calls) <= members
    if split == "disjoint" or (split == "complement" and members == 2):  # one holder per sample: one attack
        assert crafted == needed
    else:
        assert crafted > needed
    # Every member learns from each other member about equally (uniform over the others).
    for m in range(members):
        share = counts[m] / counts[m].sum()
        others = [k for k in range(members) if k != m]
        assert share[m] == 0 and (share[others] - 1 / (members - 1)).abs().max() < 0.15, (split, m, share)


def test_others_crafts_each_example_with_its_source_and_the_batch_labels():
    data = TinyImages()
    setup = setup_for("eat", {"members": M, "split": "none", "transfer": "others", "attack": ATTACK}, data=data)
    nets = list(setup.model.members)
    calls = []

    def record(model, objective, images):
        calls.append((model, objective, images.clone()))
        return images + 0.0

    batch = next(batches(data))
    shares = setup.step.shares(batch.indices)
    torch.manual_seed(0)
    Others().craft(record, nets, setup.criterion, batch.images, batch.labels, shares)
    flat = batch.images.flatten(1)
    for model, objective, images in calls:
        assert any(model is net for net in nets)
        positions = (images.flatten(1)[:, None] == flat[None]).all(2).float().argmax(1)
        assert torch.equal(objective._state["labels"], batch.labels[positions])  # labels follow the images


# ---------------------------------------------------------------- momentum


def _weights(member):
    return {k: v.detach().clone() for k, v in live_weights(member).items()}


def _one_update(setup, batch, optimizer, hook: bool):
    setup.model.train()
    loss = setup.step(setup.model, setup.criterion, batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if hook:
        setup.step.after_optimizer_step()


def test_momentum_average_follows_the_live_weights_and_crafts_the_examples():
    data = TinyImages()
    decay = 0.5
    options = {"members": M, "transfer": "momentum", "momentum": decay, "attack": ATTACK}
    setup = setup_for("eat", options, data=data)
    nets, transfer = list(setup.model.members), setup.step.transfer
    optimizer = optimizer_for(setup)
    batch, later = list(batches(data))[:2]
    initial = [_weights(net) for net in nets]
    _one_update(setup, batch, optimizer, hook=True)
    live = [_weights(net) for net in nets]
    for m in range(M):
        average = transfer.averages[m]
        for name, w0 in initial[m].items():
            if w0.is_floating_point():
                torch.testing.assert_close(average[name], decay * w0 + (1 - decay) * live[m][name])
        moved = sum((live[m][k] - initial[m][k]).norm() for k in live[m] if live[m][k].is_floating_point())
        left = sum((live[m][k] - average[k]).norm() for k in live[m] if live[m][k].is_floating_point())
        assert 0 < left < moved  # the average moved towards the live weights, not all the way
    # The next step crafts against the averages (not the live members), each sample against one of them.
    calls = []
    setup.step.adversary = lambda model, objective, images: calls.append(model) or images
    setup.step(setup.model, setup.criterion, later)
    assert calls and all(isinstance(model, Averaged) for model in calls)
    probe = later.images[:4]
    for model in calls:
        m = next(i for i, net in enumerate(nets) if net is model.member)
        assert model.weights is transfer.averages[m]
        with torch.no_grad():
            model.eval()
            torch.testing.assert_close(model(probe), functional_call(nets[m], transfer.averages[m], (probe,)))
            assert not torch.allclose(model(probe), nets[m](probe), atol=1e-4)
    setup.model.train()


def test_momentum_update_without_the_trainer_hook_is_the_same():
    """Without ``after_optimizer_step`` the step applies the update when it next runs: identical averages."""
    data = TinyImages()
    options = {"members": 2, "transfer": "momentum", "momentum": 0.9, "attack": ATTACK}
    runs = []
    for hook in (True, False):
        setup = setup_for("eat", options, data=data)
        optimizer = optimizer_for(setup)
        for i, batch in enumerate(list(batches(data))[:3]):
            torch.manual_seed(i)
            _one_update(setup, batch, optimizer, hook)
        setup.step.after_optimizer_step()  # catch up the last update (a no-op with the hook)
        runs.append(setup.step.transfer.averages)
    for with_hook, lazy in zip(*runs, strict=True):
        for name in with_hook:
            torch.testing.assert_close(with_hook[name], lazy[name], rtol=0, atol=0)


def test_momentum_zero_is_each_member_exactly():
    data = TinyImages()
    losses = {}
    for transfer, extra in (("each_member", {}), ("momentum", {"momentum": 0.0})):
        setup = setup_for("eat", {"members": M, "transfer": transfer, "attack": ATTACK, **extra}, data=data)
        torch.manual_seed(3)
        losses[transfer] = train_steps(setup, data, steps=3)
    assert losses["momentum"] == losses["each_member"]


def test_momentum_state_round_trips_through_a_checkpoint(tmp_path):
    data = TinyImages()
    options = {"members": 2, "transfer": "momentum", "momentum": 0.9, "attack": ATTACK}
    first = setup_for("eat", options, data=data)
    optimizer = optimizer_for(first)
    batch, later = list(batches(data))[:2]
    _one_update(first, batch, optimizer, hook=False)  # the update is still pending when the checkpoint is taken
    path = tmp_path / "step.pt"
    torch.save({"model": first.model.state_dict(), "step": first.step.state_dict()}, path)
    state = torch.load(path, weights_only=True)
    resumed, fresh = setup_for("eat", options, data=data), setup_for("eat", options, data=data)
    for setup in (resumed, fresh):
        setup.model.load_state_dict(state["model"])
        setup.criterion.load_state_dict(first.criterion.state_dict())
    resumed.step.load_state_dict(state["step"])
    results = []
    for setup in (first, resumed, fresh):
        setup.model.train()
        torch.manual_seed(7)
        results.append(setup.step(setup.model, setup.criterion, later).item())
    assert results[1] == results[0]
    assert results[2] != results[0]  # without the state, the averages restart from the live weights


# ---------------------------------------------------------------- gradient diversity


def _step_and_grads(options, data, batch, seed=0):
    setup = setup_for("eat", options, seed=seed, data=data)
    setup.model.train()
    torch.manual_seed(11)
    loss = setup.step(setup.model, setup.criterion, batch)
    loss.backward()
    return setup, loss.detach(), [p.grad.clone() for p in setup.model.parameters()]


def test_gradient_diversity_zero_computes_nothing_extra(monkeypatch):
    data = TinyImages()
    batch = next(batches(data))
    reference = _step_and_grads({"members": M, "attack": ATTACK}, data, batch)
    created = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: created.append(k.get("create_graph")) or grad(*a, **k))
    setup, loss, grads = _step_and_grads({"members": M, "attack": ATTACK, "gradient_diversity": 0.0}, data, batch)
    assert created and not any(created)  # only the attack's input gradients, none with a graph
    assert torch.equal(loss, reference[1]) and all(torch.equal(a, b) for a, b in zip(grads, reference[2], strict=True))
    setup.step.set_epoch(0)
    assert "gradient_diversity_images" not in setup.step.epoch_info()


def test_gradient_diversity_adds_the_alignment_and_its_gradient_reaches_every_member():
    data = TinyImages()
    batch = next(batches(data))
    base = {"members": M, "attack": ATTACK}
    _, loss0, grads0 = _step_and_grads(base, data, batch)
    setup, loss1, grads1 = _step_and_grads({**base, "gradient_diversity": 1.0}, data, batch)
    alignment = loss1 - loss0
    assert -1 <= alignment <= 1 and alignment.abs() > 1e-4
    for member in setup.model.members:  # every member's parameters get a different gradient
        names = {id(p) for p in member.parameters()}
        pairs = zip(setup.model.parameters(), grads0, grads1, strict=True)
        changed = [not torch.allclose(g0, g1) for p, g0, g1 in pairs if id(p) in names]
        assert any(changed)
    setup.step.set_epoch(0)
    setup.step(setup.model, setup.criterion, batch)
    # 3 members, complement: every image is held by 2 members, whose input gradients are differentiated again.
    assert setup.step.epoch_info()["gradient_diversity_images"] == 2 * len(batch.images)


def test_gradient_diversity_is_inert_without_common_samples():
    data = TinyImages()
    batch = next(batches(data))
    base = {"members": M, "split": "disjoint", "attack": ATTACK}
    _, loss0, grads0 = _step_and_grads(base, data, batch)
    _, loss1, grads1 = _step_and_grads({**base, "gradient_diversity": 1.0}, data, batch)
    torch.testing.assert_close(loss1, loss0)
    assert all(torch.allclose(a, b) for a, b in zip(grads0, grads1, strict=True))


def _probe_alignment(setup, probe):
    """The penalty's alignment on ``probe`` at the setup's current weights (clean inputs as the leaves)."""
    step, nets = setup.step, list(setup.model.members)
    shares = step.shares(probe.indices)
    inputs = [probe.images[share].clone().requires_grad_(True) for share in shares]
    losses = {m: setup.criterion[m](nets[m](x), probe.labels[share])
              for m, (x, share) in enumerate(zip(inputs, shares, strict=True))}
    return gradient_alignment(losses, inputs, shares, len(probe.images)).item()


def test_gradient_diversity_lowers_the_members_gradient_alignment():
    data = TinyImages()
    probe = next(batches(data, epoch=99))
    aligned = {}
    for weight in (0.0, 5.0):
        setup = setup_for("eat", {"members": M, "split": "none", "attack": ATTACK, "gradient_diversity": weight},
                          data=data)
        torch.manual_seed(0)
        train_steps(setup, data, steps=8)
        setup.model.eval()
        aligned[weight] = _probe_alignment(setup, probe)
    assert aligned[5.0] < 0.7 * aligned[0.0], aligned  # measured: 0.066 vs 0.126


# ---------------------------------------------------------------- training and cost


@pytest.mark.parametrize(
    "options",
    [{"transfer": "others"}, {"transfer": "momentum", "momentum": 0.5}, {"gradient_diversity": 0.5}],
    ids=["others", "momentum", "gradient_diversity"],
)
def test_new_readings_lower_the_loss(options):
    data = TinyImages()
    setup = setup_for("eat", {"members": M, "attack": ATTACK, **options}, data=data)
    probe = next(batches(data, epoch=99))

    def probe_loss():
        torch.manual_seed(0)
        return setup.step(setup.model, setup.criterion, probe).item()

    setup.model.train()
    before = probe_loss()
    train_steps(setup, data, steps=12)
    assert probe_loss() < 0.8 * before


class SizeAdversary(Adversary):
    """The real adversary, recording how many images each attack crafts."""

    sizes: list[int]

    def __call__(self, model, objective, images):
        self.sizes.append(len(images))
        return super().__call__(model, objective, images)


@pytest.mark.parametrize("transfer", ["each_member", "momentum", "others"])
def test_forward_backward_images_count_every_attack_pass(transfer):
    """K passes per crafted image (the averages' passes included) plus one per member that trains on the image."""
    data = TinyImages()
    batch = next(batches(data))
    setup = setup_for("eat", {"members": M, "transfer": transfer, "attack": ATTACK}, data=data)
    adversary = setup.step.adversary = SizeAdversary(setup.step.adversary.options)
    adversary.sizes = []
    counter = ForwardCounter(setup.model)
    setup.model.train()
    setup.step(setup.model, setup.criterion, batch)
    counter.close()
    trained = sum(len(share) for share in setup.step.shares(batch.indices))
    assert counter.images == ATTACK["steps"] * sum(adversary.sizes) + trained
    if transfer != "others":
        assert sum(adversary.sizes) == len(batch.images)


@pytest.mark.parametrize("transfer", ["others", "momentum"])
def test_members_learn_only_from_their_share_through_fit(tmp_path, transfer):
    """As for the other readings (test_eat): each member's training inputs are adversarial copies of exactly its
    share, and its parameters' gradient is that of its own loss on them (the averages' attacks add nothing)."""
    from eatlib.params import TrainConfig
    from eatlib.train import fit

    data = TinyImages()
    eps = 8 / 255
    setup = setup_for("eat", {"members": M, "transfer": transfer, "attack": ATTACK}, data=data)
    recorder = RecordingStep(setup.step, setup.model, setup.criterion)
    cfg = TrainConfig(epochs=1, batch_size=24, samples_per_class=4, lr=3e-3, warmup_epochs=0)
    fit(setup.model, setup.criterion, data, None, cfg, out_dir=tmp_path, step=recorder, progress=False,
        meta=setup.meta)
    clean = data.images.float().div(255)
    for record in recorder.steps:
        indices = record["batch"].indices
        for m in range(M):
            (inputs,) = record["inputs"][m]
            assert identify(inputs, clean, eps).tolist() == indices[record["shares"][m]].tolist()
            for key, calls in record["grads"][m].items():
                assert len(calls) == 1
                torch.testing.assert_close(calls[0], record["expected"][m][key], rtol=1e-4, atol=1e-7)
