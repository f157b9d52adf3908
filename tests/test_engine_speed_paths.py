"""The engine's speed levers change speed, not results (issue 11).

- bf16 crafting on CPU: on a trained standard model and a trained EAT ensemble (cnn4 at 16px on glyphs), the
  headline attack crafted under bf16 autocast gives ARI and AMI within 0.01 of float32 crafting (scoring is
  float32 in both); the crafted images are not the same (bf16 really ran), and they are within the budget.
- The strided-depthwise float32 guard: inside it, a strided depthwise convolution runs and returns float32
  under CPU autocast while other convolutions still run in bf16.
- The training-time Adversary crafts under bf16 when ``build_training(..., craft_bf16=True)`` says so.
- Folded crafting (``craft_folded``): against a BatchNorm-folded copy, the examples are the unfolded ones but for
  rounding, and the live model's statistics and train flags are untouched.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eatlib.attacks import HEADLINE, PGD, EmbeddingShift
from eatlib.attacks.eot import StridedDepthwiseFloat32, forward_embeddings
from eatlib.data import load_splits
from eatlib.defenses import build_training
from eatlib.defenses.adversary import TrainingLoss, eval_mode
from eatlib.evaluate import evaluate_robustness
from eatlib.models import build_model
from eatlib.params import LossConfig, TrainConfig
from eatlib.train import Batch, build_optimizer

SEED, SIZE, DIM = 0, 16, 32
EASY_GLYPHS = dict(rotation_deg=5.0, shift=0.05, scale_range=(0.8, 0.95), tint=0.1, noise_range=(0.0, 0.02))


def _member():
    return build_model("cnn4", embedding_dim=DIM, image_size=SIZE)


def _batches(images, labels, generator, size=60, per_class=4):
    """Class-balanced batches: ``size // per_class`` classes, ``per_class`` images each."""
    classes = labels.unique()
    for _ in range(len(images) // size):
        chosen = classes[torch.randperm(len(classes), generator=generator)[: size // per_class]]
        rows = torch.cat([torch.nonzero(labels == c).flatten()[torch.randperm(int((labels == c).sum()),
                          generator=generator)[:per_class]] for c in chosen])
        yield Batch(images[rows].float() / 255, labels[rows], rows)


def _train(name, options, splits, epochs, make_member=_member):
    torch.manual_seed(SEED)
    data = splits.train
    setup = build_training(name, options, make_member=make_member, num_classes=data.num_classes,
                           num_samples=len(data), loss_cfg=LossConfig(), seed=SEED)
    optimizer = build_optimizer(setup.model, setup.criterion, TrainConfig(lr=3e-3, batch_size=60,
                                                                          samples_per_class=4))
    images, labels = data.images, torch.as_tensor(data.labels)
    generator = torch.Generator().manual_seed(SEED)
    setup.model.train()
    for epoch in range(epochs):
        if hasattr(setup.step, "set_epoch"):
            setup.step.set_epoch(epoch)
        for batch in _batches(images, labels, generator):
            optimizer.zero_grad()
            setup.step(setup.model, setup.criterion, batch).backward()
            optimizer.step()
    return setup.model.eval()


@pytest.fixture(scope="module")
def splits():
    return load_splits("glyphs", seed=SEED, num_classes=120, images_per_class=16, image_size=SIZE, **EASY_GLYPHS)


@pytest.fixture(scope="module")
def standard(splits):
    return _train("standard", None, splits, epochs=15)


@pytest.mark.slow  # trains two small models (~40 s on 2 cores)
@pytest.mark.parametrize("defense", ["standard", "eat"])
def test_bf16_crafting_keeps_the_headline_scores_within_001(splits, standard, defense):
    model = standard
    if defense == "eat":
        # As in the pipeline, EAT starts from the clean network (a mild budget, so seconds of it keep clustering).
        options = {"members": 3, "attack": {"eps": 4 / 255, "step_size": 1 / 255, "steps": 3, "warmup_epochs": 0}}
        model = _train("eat", options, splits, epochs=3, make_member=lambda: copy.deepcopy(standard))
    test = splits.test
    runs = {amp: evaluate_robustness(model, test, [HEADLINE], seed=SEED, batch_size=250, progress=False, amp=amp)
            for amp in (False, True)}
    fp32, bf16 = (runs[amp]["attacks"][HEADLINE["name"]] for amp in (False, True))
    assert runs[False]["clean"] == runs[True]["clean"]  # clean scoring is float32 either way
    # The attack bites (a real comparison): relative, since the mild EAT run's clean ARI is low (0.10 on one CPU)
    # and its exact value moves with the CPU's float kernels.
    assert fp32["ari"] < 0.7 * runs[False]["clean"]["ari"]
    for metric in ("ari", "ami"):
        assert abs(bf16[metric] - fp32[metric]) <= 0.01, (metric, fp32[metric], bf16[metric])
    assert bf16["perturbation"]["linf_max"] <= HEADLINE["eps"] + 1e-6


def test_bf16_crafting_really_runs_bf16_and_stays_in_the_budget():
    torch.manual_seed(SEED)
    net = _member().eval()
    images = torch.rand(16, 3, SIZE, SIZE)
    with torch.no_grad():
        clean = net(images)
    objective = EmbeddingShift().prepare(clean)
    index = torch.arange(16)
    fp32, bf16 = (PGD(net, objective, eps=8 / 255, alpha=2 / 255, steps=5, amp=amp)(images, index)
                  for amp in (False, True))
    assert not torch.equal(fp32, bf16)
    assert (bf16 - images).abs().max() <= 8 / 255 + 1e-6 and bf16.min() >= 0 and bf16.max() <= 1
    assert forward_embeddings(net, images, amp=True).dtype == torch.float32


def test_strided_depthwise_convolutions_stay_float32_under_cpu_autocast():
    x = torch.rand(2, 8, 8, 8)
    depthwise, dense = torch.randn(8, 1, 3, 3), torch.randn(8, 8, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16), StridedDepthwiseFloat32():
        strided = F.conv2d(x, depthwise, None, 2, 1, 1, 8)
        unstrided = F.conv2d(x, depthwise, None, 1, 1, 1, 8)
        plain = F.conv2d(x, dense, padding=1)
    assert strided.dtype == torch.float32
    torch.testing.assert_close(strided, F.conv2d(x, depthwise, None, 2, 1, 1, 8))
    assert unstrided.dtype == torch.bfloat16 and plain.dtype == torch.bfloat16


@pytest.mark.parametrize("craft_bf16", [False, True])
def test_build_training_passes_craft_bf16_to_the_adversary(craft_bf16):
    for name in ("pgd_at", "eat"):
        setup = build_training(name, None, make_member=_member, num_classes=8, num_samples=32, seed=SEED,
                               craft_bf16=craft_bf16)
        assert setup.step.adversary.amp is craft_bf16
    build_training("standard", None, make_member=_member, num_classes=8, num_samples=32, craft_bf16=True)


def test_folded_crafting_gives_the_unfolded_examples_up_to_rounding_and_leaves_the_model_as_it_was():
    torch.manual_seed(SEED)
    resnet = build_model("resnet18", embedding_dim=DIM, image_size=SIZE, width=4)
    setup = build_training("pgd_at", {"attack": {"steps": 3, "warmup_epochs": 0}}, make_member=lambda: resnet,
                           num_classes=8, num_samples=64, seed=SEED)
    model, adversary = setup.model, setup.step.adversary
    model.train()
    with torch.no_grad():  # BatchNorm statistics of their own, so that folding has something to fold
        for _ in range(3):
            model(torch.rand(32, 3, SIZE, SIZE) * 0.5)
    before = copy.deepcopy(model.state_dict())
    images, labels = torch.rand(32, 3, SIZE, SIZE), torch.arange(32) % 8
    objective = TrainingLoss(setup.criterion, labels)
    crafted = {}
    for fold in (False, True):
        adversary.fold = fold
        torch.manual_seed(1)  # the same random start and PGD seed for both
        crafted[fold] = adversary(model, objective, images)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    same = (crafted[True] == crafted[False]).float().mean()
    assert same > 0.99, f"only {same:.4f} of the pixels agree"
    assert not torch.equal(crafted[False], images)
    with torch.no_grad(), eval_mode(model):
        losses = [float(setup.criterion(model(crafted[fold]), labels)) for fold in (False, True)]
    assert abs(losses[0] - losses[1]) <= 1e-3 * abs(losses[0])


def test_build_training_passes_craft_folded_to_the_adversary():
    for name in ("pgd_at", "trades", "eat"):
        for folded in (False, True):
            setup = build_training(name, None, make_member=_member, num_classes=8, num_samples=32, seed=SEED,
                                   craft_folded=folded)
            assert setup.step.adversary.fold is folded


@pytest.mark.parametrize("transfer", ["each_member", "ensemble"])
def test_folded_crafting_traces_each_network_once_across_batches(monkeypatch, transfer):
    # EAT crafts against each member in turn ("each_member") or a fresh MemberStack view of all ("ensemble").
    from eatlib.defenses import adversary as adversary_module

    built = []

    class Counting(adversary_module.RefreshedFold):
        def __init__(self, model):
            built.append(model)
            super().__init__(model)

    monkeypatch.setattr(adversary_module, "RefreshedFold", Counting)
    torch.manual_seed(SEED)
    options = {"members": 2, "transfer": transfer, "attack": {"steps": 1, "warmup_epochs": 0}}
    setup = build_training("eat", options, make_member=_member, num_classes=8, num_samples=32, seed=SEED,
                           craft_folded=True)
    setup.model.train()
    for step in range(3):
        batch = Batch(torch.rand(16, 3, SIZE, SIZE), torch.arange(16) % 8, torch.arange(16) + 16 * (step % 2))
        setup.step(setup.model, setup.criterion, batch).backward()
    assert sorted(map(id, built)) == sorted(map(id, setup.model.members))  # one trace per member, ever


@pytest.mark.parametrize("craft_bf16, craft_folded", [(False, True), (True, False)])
def test_the_pipeline_crafts_as_models_arch_says(craft_bf16, craft_folded):
    import yaml

    import eatlib.load  # noqa: F401  (registers the names and options that Params validates)
    from eatlib.params import Params, from_dict
    from eatlib.pipeline import training_setup

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert shipped["models"]["resnet"]["craft_folded"] is False  # ResNet crafts unfolded (1.09x, its ensemble 0.96x)
    shipped["models"]["resnet"].update(craft_bf16=craft_bf16, craft_folded=craft_folded)
    params = from_dict(Params, shipped)

    class TrainSplit:  # what training_setup reads of the split
        num_classes = 8

        def __len__(self):
            return 32

    for defense in ("pgd_at", "eat"):
        adversary = training_setup(params, "resnet", defense, TrainSplit(), seed=0).step.adversary
        assert (adversary.amp, adversary.fold) == (craft_bf16, craft_folded), defense
