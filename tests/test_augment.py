"""The batched per-image affine augmentation of in-memory training batches, and its config."""

import pytest
import torch

from eatlib.data.augment import random_affine
from eatlib.params import AugmentConfig, ConfigError, from_dict


def square_images(n=8, size=16):
    """The same image n times: a bright 4x4 square in the centre of a dark background."""
    x = torch.zeros(n, 3, size, size)
    x[:, :, size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] = 1.0
    return x


def test_off_returns_the_input_unchanged():
    x = square_images()
    assert random_affine(x) is x


def test_each_image_gets_its_own_draw_and_stays_in_range():
    x = square_images()
    torch.manual_seed(0)
    y = random_affine(x, shift=0.2, rotation_deg=20, scale=(0.8, 1.2))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    flat = y.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(float("inf")).min() > 0.1  # no two images transformed alike
    torch.manual_seed(0)
    assert torch.equal(random_affine(x, shift=0.2, rotation_deg=20, scale=(0.8, 1.2)), y)  # seeded


def test_a_shift_moves_the_content_by_at_most_the_asked_fraction():
    x = square_images(n=64, size=32)
    torch.manual_seed(1)
    y = random_affine(x, shift=0.125)  # at most 4 pixels either way
    grid = torch.arange(32.0)
    mass = y[:, 0]
    centre_x = (mass.sum(1) * grid).sum(1) / mass.sum((1, 2))
    centre_y = (mass.sum(2) * grid).sum(1) / mass.sum((1, 2))
    offset = torch.stack([centre_x, centre_y], 1) - 15.5
    assert offset.abs().max() <= 4.05 and offset.abs().max() > 2  # within the budget, and using it
    assert torch.allclose(mass.sum((1, 2)), x[:, 0].sum((1, 2)), rtol=1e-3)  # moved, not cut or scaled


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="train.augment.shift"):
        from_dict(AugmentConfig, {"shift": 0.7}, "train.augment")
    with pytest.raises(ConfigError, match="scale"):
        from_dict(AugmentConfig, {"scale": [1.2, 0.8]}, "train.augment")
