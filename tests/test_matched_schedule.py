"""``matched_schedule``: a baseline stretched to spend another defense's training budget (forward-backward images),
checked with costs that differ, by hand and as measured by the trainer for PGD-AT and EAT."""

from __future__ import annotations

import pytest
import torch
from test_defenses import ATTACK, TinyImages, setup_for

from eatlib.params import TrainConfig
from eatlib.pipeline import matched_schedule
from eatlib.train import fit


def cost(epochs: int, images: int) -> dict:
    return {"train_seconds": 1.0, "forward_backward_images": images, "epochs": epochs}


def test_a_cheaper_baseline_gets_more_epochs_and_a_stretched_schedule():
    cfg = TrainConfig(epochs=10, lr_milestones=[6, 8], warmup_epochs=1.0)
    # PGD-AT: 120k images per epoch; EAT: 3.0M in its 10 epochs (2.5x as much per epoch).
    matched = matched_schedule(cfg, own=cost(10, 1_200_000), target=cost(10, 3_000_000))
    assert matched.epochs == 25 and 25 * 120_000 == 3_000_000
    assert matched.lr_milestones == [15, 20]  # 6 and 8 of 10 -> 15 and 20 of 25
    assert matched.warmup_epochs == pytest.approx(2.5)
    assert (matched.lr, matched.batch_size) == (cfg.lr, cfg.batch_size)  # nothing else changes


def test_the_epochs_are_rounded_to_the_nearest_budget():
    cfg = TrainConfig(epochs=10)
    # 2.95M / 120k = 24.58 -> 25 epochs; 2.93M / 120k = 24.42 -> 24; spent within half an epoch of the target.
    for target, epochs in ((2_950_000, 25), (2_930_000, 24)):
        matched = matched_schedule(cfg, own=cost(10, 1_200_000), target=cost(10, target))
        assert matched.epochs == epochs
        assert abs(matched.epochs * 120_000 - target) <= 120_000 / 2


def test_a_dearer_baseline_gets_fewer_epochs_and_milestones_stay_valid():
    cfg = TrainConfig(epochs=10, lr_milestones=[6, 8], warmup_epochs=1.0)
    matched = matched_schedule(cfg, own=cost(5, 1_500_000), target=cost(10, 1_200_000))  # 300k/epoch -> 4
    assert matched.epochs == 4 and matched.lr_milestones == [2, 3] and matched.warmup_epochs == pytest.approx(0.4)
    tiny = matched_schedule(cfg, own=cost(10, 1_200_000), target=cost(10, 10_000))  # less than one epoch
    assert tiny.epochs == 1 and tiny.lr_milestones == [1]  # both milestones clamp into the single epoch


def measured_cost(defense, options, cfg, tmp_path) -> dict:
    data = TinyImages()
    setup = setup_for(defense, options, data=data)
    history = fit(setup.model, setup.criterion, data, None, cfg, out_dir=tmp_path / defense, step=setup.step,
                  progress=False, meta=setup.meta)
    return {"train_seconds": sum(h["seconds"] for h in history),
            "forward_backward_images": sum(h["forward_backward_images"] for h in history), "epochs": len(history)}


def test_matched_pgd_at_spends_the_measured_budget_of_eat(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, batch_size=24, samples_per_class=4, lr=1e-3, warmup_epochs=0)
    pgd = measured_cost("pgd_at", {"attack": ATTACK}, cfg, tmp_path)
    eat = measured_cost("eat", {"members": 3, "attack": ATTACK}, cfg, tmp_path)
    per_epoch = pgd["forward_backward_images"] / pgd["epochs"]
    # Per image and epoch, PGD-AT: `steps` attack passes + 1 training pass; EAT (each_member transfer, complement
    # split): `steps` attack passes against one member + M - 1 = 2 training passes. 48 images, 2 epochs.
    steps = ATTACK["steps"]
    assert pgd["forward_backward_images"] == 2 * 48 * (steps + 1)
    assert eat["forward_backward_images"] == 2 * 48 * (steps + 2)
    matched = matched_schedule(cfg, own=pgd, target=eat)
    assert matched.epochs == round(eat["forward_backward_images"] / per_epoch) > cfg.epochs
    spent = measured_cost("pgd_at", {"attack": ATTACK}, matched, tmp_path / "matched")
    assert spent["forward_backward_images"] == matched.epochs * per_epoch  # each epoch costs the same
    assert abs(spent["forward_backward_images"] - eat["forward_backward_images"]) <= per_epoch / 2
