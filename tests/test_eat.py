"""Ensemble Adversarial Training: members see exactly their data parts, each self-transfer variant uses the
examples or statistics it claims to, and the ensemble checkpoint round-trips."""

from __future__ import annotations

import pytest
import torch
from test_defenses import ATTACK, DIM, SIZE, TinyImages, batches, setup_for, train_steps
from torch import nn

from eatlib.defenses import MemberStack, TrainingLoss, batch_share, membership
from eatlib.defenses.transfer import batchnorm_layers
from eatlib.persistence import load_model, save_model

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
    """fit() runs the ensemble step, tells it the epoch and records each epoch's eps: the ramp
    eps * min(1, (e + 1) / (k + 1)) epoch by epoch, then full eps; the ensemble is saved as one model."""
    from eatlib.params import TrainConfig
    from eatlib.train import fit

    data = TinyImages()
    warmup, epochs = 2, 4
    setup = setup_for("eat", {"members": 2, "attack": {**ATTACK, "warmup_epochs": warmup}}, data=data)
    cfg = TrainConfig(epochs=epochs, batch_size=24, samples_per_class=4, lr=3e-3, warmup_epochs=0)
    history = fit(setup.model, setup.criterion, data, None, cfg, out_dir=tmp_path, step=setup.step,
                  progress=False, meta=setup.meta)
    assert len(history) == epochs and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    expected = [8 / 255 * 1 / 3, 8 / 255 * 2 / 3, 8 / 255, 8 / 255]  # k = 2: thirds, then full
    assert [h["eps"] for h in history] == pytest.approx(expected)
    assert [h["step_size"] for h in history] == pytest.approx([4 / 255 * e / (8 / 255) for e in expected])
    assert isinstance(load_model(tmp_path / "model.pt"), nn.Module)


# ---------------------------------------------------------------- the split property under every transfer, via fit


class RecordingStep:
    """Wraps an EAT step inside ``fit``: per step, each member's training-mode inputs, its share and the
    gradient its own share's loss gives its parameters (recomputed from those inputs, buffers restored)."""

    def __init__(self, step, model, criteria):
        self.step, self.model, self.criteria, self.steps = step, model, criteria, []
        self.recording = True
        self.members = list(model.members)
        for m, member in enumerate(self.members):
            member.register_forward_hook(self._record_input(m))
            for p in member.parameters():
                p.register_hook(self._record_grad(m, p))

    def _record_input(self, m):
        def hook(module, inputs, output):
            if module.training and self.recording:
                self.steps[-1]["inputs"][m].append(inputs[0].detach().clone())
        return hook

    def _record_grad(self, m, p):
        def hook(grad):
            if self.recording:
                self.steps[-1]["grads"][m].setdefault(id(p), []).append(grad.detach().clone())
        return hook

    def set_epoch(self, epoch):
        self.step.set_epoch(epoch)

    def epoch_info(self):
        return self.step.epoch_info()

    def __call__(self, model, criterion, batch):
        record = {"batch": batch, "shares": self.step.shares(batch.indices),
                  "inputs": {m: [] for m in range(M)}, "grads": {m: {} for m in range(M)}}
        self.steps.append(record)
        loss = self.step(model, criterion, batch)
        self.recording = False  # the reference passes below are not the step's
        record["expected"] = [self._own_share_gradient(m, record) for m in range(M)]
        self.recording = True
        return loss

    def _own_share_gradient(self, m, record):
        member, share = self.members[m], record["shares"][m]
        if not len(share):
            return None
        buffers = [(module, name, buffer) for module in member.modules() for name, buffer in module._buffers.items()]
        (inputs,) = record["inputs"][m]  # exactly one training pass per member (clean_weight 0)
        loss = self.criteria[m](member(inputs), record["batch"].labels[share]) / M
        grads = torch.autograd.grad(loss, list(member.parameters()))
        for module, name, buffer in buffers:  # the reference pass must not move BatchNorm's running statistics;
            module._buffers[name] = buffer  # put the old tensors back (the step's backward may still need them)
        return {id(p): g for p, g in zip(member.parameters(), grads, strict=True)}


def identify(images: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Dataset index of each (adversarial) image: its only clean image within eps in L-inf."""
    distance = (images.flatten(1)[:, None, :] - clean.flatten(1)[None]).abs().amax(2)  # [B, N]
    nearest = distance.topk(2, dim=1, largest=False)
    assert (nearest.values[:, 0] <= eps + 1e-6).all(), "an input is not within eps of any training image"
    assert (nearest.values[:, 1] > 2 * eps).all(), "the probe images are too close to tell apart"
    return nearest.indices[:, 0]


@pytest.mark.parametrize("split", ["complement", "bootstrap"])
@pytest.mark.parametrize("transfer", ["each_member", "ensemble", "bn_stats", "none"])
def test_members_learn_only_from_their_share_under_every_transfer_through_fit(tmp_path, transfer, split):
    """With eps > 0 and every self-transfer scheme: each member's training inputs are adversarial copies of exactly
    its share of the batch (its membership counts), and its parameters' gradient is the gradient of its own loss on
    those inputs alone (attacks that query other members or samples add nothing)."""
    from eatlib.params import TrainConfig
    from eatlib.train import fit

    data = TinyImages()
    eps = 8 / 255
    setup = setup_for("eat", {"members": M, "split": split, "transfer": transfer, "attack": ATTACK}, data=data)
    recorder = RecordingStep(setup.step, setup.model, setup.criterion)
    cfg = TrainConfig(epochs=1, batch_size=24, samples_per_class=4, lr=3e-3, warmup_epochs=0)
    fit(setup.model, setup.criterion, data, None, cfg, out_dir=tmp_path, step=recorder, progress=False,
        meta=setup.meta)
    counts = setup.step.membership
    clean = data.images.float().div(255)
    assert len(recorder.steps) == 2
    perturbed = 0
    for record in recorder.steps:
        indices = record["batch"].indices
        for m in range(M):
            share = record["shares"][m]
            expected_samples = indices[share]
            assert sorted(expected_samples.tolist()) == sorted(
                torch.repeat_interleave(indices, counts[m, indices]).tolist())
            if not len(share):
                assert not record["inputs"][m] and not record["grads"][m]
                continue
            (inputs,) = record["inputs"][m]
            assert identify(inputs, clean, eps).tolist() == expected_samples.tolist(), (transfer, m)
            perturbed += int((inputs - clean[expected_samples]).abs().amax() > eps / 2)
            grads, expected = record["grads"][m], record["expected"][m]
            assert set(grads) == set(expected)
            for key, calls in grads.items():
                assert len(calls) == 1, "a member's parameters got gradients from more than the training pass"
                torch.testing.assert_close(calls[0], expected[key], rtol=1e-4, atol=1e-7)
    assert perturbed > 0, "the inputs were not attacked: the check would not see attack-time leaks"
