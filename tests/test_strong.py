"""The strong protocol (eatlib.strong.evaluate_strong): per image the attack with the largest margin is kept,
so the combined set is at least as strong as each attack image by image; transfer sources are resolved by
name; EOT reaches randomised models; the budget of the default ensemble; the results are JSON and complete."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_trained import trained
from torch import nn

from eatlib.data import TensorImageDataset
from eatlib.params import ConfigError
from eatlib.strong import FORWARD_COST, STRONG, evaluate_strong, spec_passes, validate_strong

EPS = 8 / 255
SMALL = [
    {"name": "apgd_margin", "optimizer": "apgd", "steps": 6, "objective": "margin"},
    {"name": "apgd_multi", "optimizer": "apgd", "steps": 3, "objective": "multi_target", "targets": 2},
    {"name": "apgd_random", "optimizer": "apgd", "steps": 4, "objective": "centroid", "target": "random"},
    {"name": "square", "optimizer": "square", "queries": 20, "objective": "margin"},
    {"name": "transfer", "optimizer": "pgd", "steps": 4, "objective": "margin", "source": "other"},
]


class Net(nn.Module):
    def __init__(self, randomized=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 8)
        self.randomized, self.calls = randomized, 0

    def forward(self, x):
        self.calls += 1
        if self.randomized:
            x = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
        return F.normalize(self.head(F.relu(self.conv(x - 0.5)).mean((2, 3))), dim=1)


def _dataset(n=24, classes=4, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 3, size, size, generator=generator) * 255).to(torch.uint8)
    return TensorImageDataset(images, np.arange(n) % classes, [str(c) for c in range(classes)])


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model, other = Net().eval(), Net().eval()
    results = evaluate_strong(model, _dataset(), SMALL, transfer_sources={"other": other}, batch_size=10,
                              progress=False, fold=False, per_image=True)
    return model, results


def test_the_combined_margin_is_per_image_the_best_of_every_attack(small):
    _, results = small
    per_image = {k: np.array(v) for k, v in results["per_image"].items()}
    singles = np.stack([per_image[name] for name in results["attacks"]])
    assert np.all(per_image["combined"] >= singles.max(0) - 1e-7)
    assert np.allclose(per_image["combined"], singles.max(0))
    assert sum(results["combined"]["wins"].values()) == 24
    fooled = results["combined"]["margin"]["fooled"]
    assert all(fooled >= a["margin"]["fooled"] for a in results["attacks"].values())


def test_results_are_json_and_carry_every_hyperparameter_and_the_perturbation(small):
    _, results = small
    json.dumps(results)
    assert set(results) >= {"clean", "combined", "attacks", "worst", "worst_attack", "timing", "hyperparameters"}
    recorded = results["hyperparameters"]["specs"]
    assert [s["name"] for s in recorded] == [s["name"] for s in SMALL]
    assert recorded[-1]["source"] == "other" and recorded[0]["source"] is None and recorded[0]["momentum"] == 0.75
    for entry in [results["combined"], *results["attacks"].values()]:
        assert 0 < entry["perturbation"]["linf_max"] <= EPS + 1e-6 and entry["perturbation"]["l2_mean"] > 0
    for metric, value in results["worst"].items():
        candidates = [results["combined"][metric]] + [a[metric] for a in results["attacks"].values()]
        assert value == min(candidates)


def test_transfer_attacks_are_crafted_on_their_source():
    # A source with the same weights as the attacked model is white-box: the same images as the white-box spec.
    torch.manual_seed(1)
    model = Net().eval()
    twin = Net().eval()
    twin.load_state_dict(model.state_dict())
    spec = {"optimizer": "pgd", "steps": 3, "objective": "margin"}
    specs = [{**spec, "name": "white"}, {**spec, "name": "twin", "source": "twin"},
             {**spec, "name": "stranger", "source": "stranger"}]
    results = evaluate_strong(model, _dataset(), specs, transfer_sources={"twin": twin, "stranger": Net().eval()},
                              progress=False, fold=False, per_image=True)
    assert np.allclose(results["per_image"]["white"], results["per_image"]["twin"], atol=1e-6)
    assert not np.allclose(results["per_image"]["white"], results["per_image"]["stranger"], atol=1e-3)


def test_noise_and_a_fixed_subset_ride_along():
    model = Net().eval()
    results = evaluate_strong(model, _dataset(n=40), [SMALL[0]], subset=20, subset_seed=7, seed=1, progress=False,
                              fold=False, noise={"kmeans_seeds": 2, "bootstrap": 3})
    assert results["subset"] == {"size": 20, "of": 40, "seed": 7}
    assert len(results["combined"]["noise"]["kmeans"]["ami"]["values"]) == 2
    assert "noise" in results["attacks"]["apgd_margin"] and "clean_noise" in results


def test_unknown_sources_are_an_error_and_none_skips():
    model = Net().eval()
    specs = [SMALL[0], SMALL[-1]]
    with pytest.raises(ConfigError, match="other"):
        evaluate_strong(model, _dataset(), specs, transfer_sources={}, progress=False, fold=False)
    results = evaluate_strong(model, _dataset(), specs, transfer_sources={"other": None}, progress=False, fold=False)
    assert results["skipped"] == ["transfer"] and list(results["attacks"]) == ["apgd_margin"]
    with pytest.raises(ConfigError, match="unique"):
        validate_strong([SMALL[0], SMALL[0]])


def test_randomized_models_get_eot_in_white_box_attacks_and_in_the_selection():
    torch.manual_seed(0)
    model = Net(randomized=True).eval()
    spec = {"name": "pgd", "optimizer": "pgd", "steps": 2, "objective": "margin"}
    model.calls = 0
    results = evaluate_strong(model, _dataset(), [spec], eot_samples=3, batch_size=24, progress=False, fold=False)
    assert results["attacks"]["pgd"]["spec"]["eot"] == 3 and results["hyperparameters"]["eot_samples"] == 3
    # clean embedding 1 + PGD 2 steps x 3 samples + scoring forward 1 + selection 3
    assert model.calls == 1 + 6 + 1 + 3


def test_the_default_ensemble_costs_about_the_standard_suite():
    entries = validate_strong(STRONG)
    total = sum(spec_passes(spec) + FORWARD_COST for spec, _ in entries)
    assert 90 <= total <= 115  # the standard suite: five PGD-20 and an FGSM, 101 passes per image
    assert {s for _, s in entries} == {None, "standard", "pgd_at"}
    assert {spec["norm"] for spec, _ in entries} == {"linf"} and {spec["eps"] for spec, _ in entries} == {EPS}


@pytest.mark.slow  # trains the shared small model (~10 s) once per session
def test_on_a_trained_model_the_combined_set_beats_every_single_attack_on_the_margin():
    model, untrained, test = trained()
    specs = [{k: v for k, v in s.items()} for s in STRONG]
    results = evaluate_strong(model, test, specs, transfer_sources={"standard": untrained, "pgd_at": None},
                              progress=False, per_image=True)
    combined = results["combined"]
    assert combined["margin"]["mean"] >= max(a["margin"]["mean"] for a in results["attacks"].values())
    assert combined["ami"] < results["clean"]["ami"] - 0.2
    # An untrained source transfers almost nothing.
    assert results["attacks"]["transfer_standard"]["ami"] > results["worst"]["ami"]
