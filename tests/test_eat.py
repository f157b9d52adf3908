"""Ensemble Adversarial Training: members see exactly their data parts, each self-transfer variant uses the
examples or statistics it claims to, and the ensemble checkpoint round-trips."""

from __future__ import annotations

import pytest
import torch
from test_defenses import ATTACK, DIM, SIZE, TinyImages, batches, setup_for, train_steps
from torch import nn

from eatlib.defenses import MemberStack, TrainingLoss, batch_share, membership
from eatlib.defenses.transfer import batchnorm_layers
from eatlib.train import load_model, save_model

N, M = 48, 3
NO_ATTACK = {**ATTACK, "eps": 0}  # the engine returns the clean images unchanged: members' inputs identify samples


# ---------------------------------------------------------------- data splits


def test_split_schemes_give_the_documented_parts():
    complement, disjoint = membership("complement", M, N, seed=0), membership("disjoint", M, N, seed=0)
    assert complement.shape == disjoint.shape == (M, N)
    assert disjoint.sum(0).eq(1).all() and sorted(disjoint.sum(1).tolist()) == [16, 16, 16]
    # Same parts for both schemes: member m of complement holds every part but the one disjoint gives m.
    torch.testing.assert_close(complement, 1 - disjoint)
    boot = membership("bootstrap", M, N, seed=0)
    assert boot.sum(1).eq(N).all() and boot.max() > 1 and (boot == 0).any()
    assert not torch.equal(boot[0], boot[1])
    assert membership("none", M, N, seed=0).eq(1).all()
    # Deterministic from the seed, different across seeds.
    torch.testing.assert_close(membership("complement", M, N, seed=0), complement)
    assert not torch.equal(membership("complement", M, N, seed=1), complement)


def test_batch_share_repeats_positions_by_multiplicity():
    counts = torch.tensor([0, 2, 1, 0, 3])
    share = batch_share(counts, torch.tensor([4, 0, 1, 2]))
    assert share.tolist() == [0, 0, 0, 2, 2, 3]


@pytest.mark.parametrize("split", ["complement", "disjoint", "bootstrap", "none"])
def test_members_train_on_exactly_their_share_of_each_batch(split):
    data = TinyImages()
    setup = setup_for("eat", {"members": M, "split": split, "transfer": "none", "attack": NO_ATTACK}, data=data)
    counts = membership(split, M, N, seed=0)
    trained_on = {m: [] for m in range(M)}

    def record(m):
        def hook(module, inputs, output):
            if module.training:  # training passes only (attacks run in eval mode)
                trained_on[m].append(inputs[0].detach().clone())
        return hook

    for m, member in enumerate(setup.model.members):
        member.register_forward_hook(record(m))
    setup.model.train()
    flat = data.images.float().div(255).flatten(1)
    for batch in batches(data):
        for m in range(M):
            trained_on[m].clear()
        setup.step(setup.model, setup.criterion, batch)
        for m in range(M):
            seen = torch.cat(trained_on[m]) if trained_on[m] else torch.empty(0, 3, SIZE, SIZE)
            # Identify each input image by exact equality with the dataset's images.
            seen_indices = (seen.flatten(1)[:, None, :] == flat[None]).all(2).float().argmax(1)
            expected = torch.repeat_interleave(batch.indices, counts[m, batch.indices])
            assert sorted(seen_indices.tolist()) == sorted(expected.tolist()), (split, m)


# ---------------------------------------------------------------- self-transfer variants


class SpyAdversary:
    """Stands in for the PGD adversary: records each call and returns images tagged with the attacked model
    (pixel value = tag), so a member's training inputs reveal which model they were crafted against."""

    def __init__(self, members):
        self.members, self.calls = list(members), []

    def tag(self, model):
        if isinstance(model, MemberStack):
            return 0.9
        return 0.1 * (1 + next(i for i, m in enumerate(self.members) if m is model))

    def set_epoch(self, epoch):
        pass

    def __call__(self, model, objective, images):
        self.calls.append((model, objective, images.clone()))
        return torch.full_like(images, self.tag(model))


def _run_spied(transfer, split="complement"):
    data = TinyImages()
    setup = setup_for("eat", {"members": M, "split": split, "transfer": transfer, "attack": ATTACK}, data=data)
    members = list(setup.model.members)
    spy = setup.step.adversary = SpyAdversary(members)
    tags = {m: [] for m in range(M)}
    for m, member in enumerate(members):
        member.register_forward_hook(
            lambda module, i, o, m=m: tags[m].extend(i[0][:, 0, 0, 0].tolist()) if module.training else None)
    batch = next(batches(data))
    setup.model.train()
    setup.step(setup.model, setup.criterion, batch)
    return setup, spy, {m: [round(t, 3) for t in v] for m, v in tags.items()}, batch


def test_each_member_transfer_trains_every_member_on_examples_crafted_against_the_others():
    setup, spy, tags, batch = _run_spied("each_member")
    members = list(setup.model.members)
    assert len(spy.calls) == M and all(any(model is m for m in members) for model, _, _ in spy.calls)
    # Each sample attacked once, against one member; the calls partition the batch.
    assert sum(len(images) for _, _, images in spy.calls) == len(batch.images)
    for m in range(M):
        own = round(0.1 * (m + 1), 3)
        others = {t for t in tags[m] if t != own}
        assert others and others <= {round(0.1 * (k + 1), 3) for k in range(M)}, (m, tags[m])
    for _, objective, images in spy.calls:
        assert isinstance(objective, TrainingLoss) and objective.size == len(images)


def test_ensemble_transfer_crafts_against_all_members_at_once():
    setup, spy, tags, batch = _run_spied("ensemble")
    ((model, objective, images),) = spy.calls
    assert isinstance(model, MemberStack)
    assert [id(m) for m in model.members] == [id(m) for m in setup.model.members]
    assert len(images) == len(batch.images)
    with torch.no_grad():  # the objective sums every member's loss
        z = model(images)
        expected = sum(c(z[:, k], batch.labels) for k, c in enumerate(setup.criterion))
        torch.testing.assert_close(objective.batch(torch.arange(len(images)))(z).sum(), expected)
    assert all(set(tags[m]) == {0.9} for m in range(M))


@pytest.mark.parametrize("transfer", ["none", "bn_stats"])
def test_own_examples_variants_attack_each_member_on_its_own_share(transfer):
    setup, spy, tags, batch = _run_spied(transfer)
    members = list(setup.model.members)
    shares = setup.step.shares(batch.indices)
    assert [id(model) for model, _, _ in spy.calls] == [id(m) for m in members]
    for m, (_, _, images) in enumerate(spy.calls):
        torch.testing.assert_close(images, batch.images[shares[m]])
        assert set(tags[m]) == {round(0.1 * (m + 1), 3)}


def _running_stats(member):
    return [torch.cat([layer.running_mean, layer.running_var]) for layer in batchnorm_layers(member)]


def test_bn_stats_transfer_shares_one_init_and_averages_running_statistics():
    data = TinyImages()
    options = {"members": M, "transfer": "bn_stats", "attack": ATTACK}
    setup = setup_for("eat", options, data=data)
    members = list(setup.model.members)
    assert batchnorm_layers(members[0]), "cnn4 should have BatchNorm layers for this test to mean anything"
    for member in members[1:]:
        for a, b in zip(member.state_dict().values(), members[0].state_dict().values(), strict=True):
            torch.testing.assert_close(a, b)
    # The same step without averaging, from the same state and seed: what each member's statistics would be.
    plain = setup_for("eat", {**options, "transfer": "none"}, data=data)
    plain.model.load_state_dict(setup.model.state_dict())
    plain.criterion.load_state_dict(setup.criterion.state_dict())
    batch = next(batches(data))
    for s in (setup, plain):
        s.model.train()
        torch.manual_seed(5)
        s.step(s.model, s.criterion, batch).backward()  # averaging must not break the backward pass
    separate = [_running_stats(member) for member in plain.model.members]
    assert not torch.allclose(separate[0][0], separate[1][0])
    for member in members:
        for layer, stats in enumerate(_running_stats(member)):
            torch.testing.assert_close(stats, torch.stack([s[layer] for s in separate]).mean(0))


# ---------------------------------------------------------------- the deployable ensemble


@pytest.mark.parametrize("aggregate", ["concat", "mean", 1])
def test_ensemble_checkpoint_round_trips(tmp_path, aggregate):
    data = TinyImages()
    setup = setup_for("eat", {"members": M, "aggregate": aggregate, "attack": ATTACK}, data=data)
    train_steps(setup, data, steps=2)  # non-trivial BatchNorm statistics and weights
    model = setup.model.eval()
    save_model(model, tmp_path / "model.pt", meta=setup.meta)
    loaded = load_model(tmp_path / "model.pt")
    assert type(loaded) is type(model) and len(loaded.members) == M
    x = torch.rand(5, 3, SIZE, SIZE)
    with torch.no_grad():
        z = model(x)
        torch.testing.assert_close(loaded(x), z)
    expected_dim = M * DIM if aggregate == "concat" else DIM
    assert z.shape == (5, expected_dim)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    if aggregate == 1:
        torch.testing.assert_close(z, model.members[1](x))


def test_eat_trains_through_the_shared_trainer_with_eps_warm_up(tmp_path):
    """fit() runs the ensemble step, tells it the epoch (eps warm-up) and saves the ensemble as one model."""
    from eatlib.config import TrainConfig
    from eatlib.train import fit

    data = TinyImages()
    setup = setup_for("eat", {"members": 2, "attack": {**ATTACK, "warmup_epochs": 1}}, data=data)
    cfg = TrainConfig(epochs=2, batch_size=24, samples_per_class=4, lr=3e-3, warmup_epochs=0)
    history = fit(setup.model, setup.criterion, data, None, cfg, out_dir=tmp_path, step=setup.step,
                  progress=False, meta=setup.meta)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert setup.step.adversary.epoch == 1 and setup.step.adversary.eps()[0] == pytest.approx(8 / 255)
    assert isinstance(load_model(tmp_path / "model.pt"), nn.Module)
