"""Sanity checks (eatlib.sanity): each check passes and fails where it should on made-up numbers, the table
flags gradient masking and lists every hyper-parameter, and on a small trained model the whole battery passes
while a gradient-masked copy of the same model is flagged."""

import numpy as np
import pytest
import torch
from tiny_trained import trained
from torch import nn

from eatlib import sanity
from eatlib.attacks import HEADLINE
from eatlib.evaluate import embed, evaluate_eps_sweep, evaluate_robustness
from eatlib.metrics import cluster_metrics
from eatlib.strong import STRONG, evaluate_strong


def _results(white=0.30, square=0.40, transfer=0.60, worst=None):
    spec = lambda optimizer: {"optimizer": optimizer, "steps": 10, "name": optimizer}  # noqa: E731
    attacks = {"apgd": {"ami": white, "spec": spec("apgd"), "source": None},
               "square": {"ami": square, "spec": {**spec("square"), "queries": 50}, "source": None},
               "transfer": {"ami": transfer, "spec": spec("pgd"), "source": "standard"}}
    return {"clean": {"ami": 0.8}, "attacks": attacks, "worst": {"ami": min(white, square) if worst is None else worst}}


def test_each_check_passes_and_fails_at_its_threshold():
    assert sanity.convergence(0.30, 0.295)["passed"] and not sanity.convergence(0.30, 0.28)["passed"]
    assert sanity.convergence(0.30, 0.40)["value"] == 0  # a weaker doubled run changes nothing
    assert sanity.monotone({1: 0.7, 2: 0.5, 4: 0.505})["passed"] and not sanity.monotone({1: 0.5, 2: 0.6})["passed"]
    assert sanity.chance({64 / 255: 0.01})["passed"] and not sanity.chance({64 / 255: 0.2})["passed"]
    assert sanity.chance({8 / 255: 0.01})["passed"] is None  # no 64/255 in the sweep: not run
    assert sanity.noise(0.8, 0.79)["passed"] and not sanity.noise(0.8, 0.75)["passed"]
    assert sanity.noise([0.80, 0.84], [0.83, 0.82])["passed"]  # means over k-means seeds
    assert sanity.gradient_free_check(0.30, 0.29)["passed"] and not sanity.gradient_free_check(0.30, 0.25)["passed"]
    assert sanity.transfer_check(0.30, {"a": 0.5})["passed"] and not sanity.transfer_check(0.30, {"a": 0.2})["passed"]


def test_attacks_are_grouped_by_kind_and_the_strongest_is_doubled():
    results = _results()
    assert sanity.white_box(results) == {"apgd": 0.30} and sanity.gradient_free(results) == {"square": 0.40}
    assert sanity.transfer(results) == {"transfer": 0.60} and sanity.strongest_attack(results) == "apgd"
    assert sanity.double_budget(results["attacks"]["apgd"]["spec"])["steps"] == 20
    assert sanity.double_budget(results["attacks"]["square"]["spec"])["queries"] == 100


def test_the_table_flags_masking_and_lists_every_hyperparameter():
    rows = {"standard": sanity.sanity_checks(_results()),
            "masked": sanity.sanity_checks(_results(white=0.75, square=0.30))}
    specs = [{"name": "apgd_margin", "optimizer": "apgd", "norm": "linf", "eps": 8 / 255, "steps": 20,
              "momentum": 0.75, "source": None},
             {"name": "transfer_pgd_at", "optimizer": "pgd", "norm": "linf", "eps": 8 / 255, "steps": 10,
              "source": "pgd_at"}]
    table = sanity.sanity_table(rows, specs)
    standard, masked = (line for line in table.splitlines() if line.startswith(("| standard", "| masked")))
    assert sanity.MASKING not in standard and masked.endswith(f"{sanity.MASKING} |")
    assert "FAIL" in masked and "n/a" in standard  # no doubled run, sweep or noise given: not run
    for text in ("apgd_margin: apgd linf eps=8/255", "steps=20", "momentum=0.75", "source=pgd_at", "64/255"):
        assert text in table


class MaskedGradients(nn.Module):
    """The same embeddings with zero input gradients (a shattered-gradient defense in miniature)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x * 0 + x.detach())


def _mean_ami(embeddings, labels):
    return [cluster_metrics(embeddings, labels, seed=s)["ami"] for s in range(5)]


@pytest.mark.slow  # the shared small model (~10 s to train) and about 25 s of attacks
def test_on_a_small_trained_model_every_check_passes_and_masking_is_flagged():
    model, untrained, test = trained(classes=30, per_class=16)
    sources = {"standard": untrained, "pgd_at": None}
    results = evaluate_strong(model, test, STRONG, transfer_sources=sources, progress=False)
    spec = results["attacks"][sanity.strongest_attack(results)]["spec"]
    doubled = next(iter(evaluate_robustness(model, test, [sanity.double_budget(spec)],
                                            progress=False)["attacks"].values()))
    # Pull to random centres (push 0): with push 1 the maximiser keeps the own cluster at large eps.
    sweep = evaluate_eps_sweep(model, test, {**HEADLINE, "push": 0.0},
                               ["2/255", "4/255", "8/255", "16/255", "64/255"], progress=False)
    # Uniform noise of the same eps, AMI over five k-means seeds (one k-means on 480 points wobbles by ~0.03).
    clean, labels = embed(model, test)
    images = test.images.float() / 255
    torch.manual_seed(0)
    with torch.no_grad():
        noisy = model((images + (torch.rand_like(images) * 2 - 1) * 8 / 255).clamp(0, 1))
    checks = sanity.sanity_checks(results, doubled=doubled, sweep=sweep,
                                  noise_results={"ami": _mean_ami(noisy, labels)}, clean_ami=_mean_ami(clean, labels))
    assert all(c["passed"] for c in checks), [c for c in checks if not c["passed"]]

    masked = MaskedGradients(model).eval()
    white_box = [s for s in STRONG if s["optimizer"] != "square" and "source" not in s]
    square = {**next(s for s in STRONG if s["optimizer"] == "square"), "queries": 150}
    masked_results = evaluate_strong(masked, test, [*white_box, square], progress=False, fold=False)
    masked_checks = sanity.sanity_checks(masked_results)
    assert sanity.masking_gradients(masked_checks)
    assert not sanity.masking_gradients(checks)
    assert masked_results["attacks"]["square_margin"]["ami"] < np.mean(_mean_ami(clean, labels)) - 0.05
