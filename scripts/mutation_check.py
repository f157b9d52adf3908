"""Mutation check: break the attack, metric and defense code on purpose and show that the tests notice.

    python scripts/mutation_check.py            # every mutation; exit status 1 if one survives
    python scripts/mutation_check.py kmeans_seed_ignored pgd_no_projection

Each mutation is applied by monkeypatching (the source files are never touched) in a fresh child process, which
then runs the tests meant to catch it with ``pytest.main``; a mutation is *caught* when at least one of them
fails. The same tests are first run unmutated, so a "catch" is never a test that fails anyway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------- the mutations

def flip_objective_sign(patch) -> None:
    """Every gradient optimiser steps down the objective instead of up."""
    from eatlib.attacks import optimizers

    unit_step = optimizers._unit_step
    patch.setattr(optimizers, "_unit_step", lambda grad, norm: unit_step(grad, norm).neg_())


def drop_projection(patch) -> None:
    """PGD and friends keep the pixel range but forget the eps ball."""
    from eatlib.attacks.base import Attack

    patch.setattr(Attack, "project", lambda self, adversarial, images, box=None: adversarial.clamp_(0, 1))


def ignore_kmeans_seed(patch) -> None:
    """k-means always runs with seed 0, whatever the caller asks."""
    from eatlib import metrics

    assign = metrics.kmeans_assign
    patch.setattr(metrics, "kmeans_assign", lambda x, k, *, seed=0: assign(x, k, seed=0))


def geometric_nmi(patch) -> None:
    """NMI normalised by the geometric mean of the entropies (not the arithmetic mean the papers report)."""
    from sklearn.metrics import normalized_mutual_info_score

    from eatlib import metrics

    patch.setattr(metrics, "normalized_mutual_info_score",
                  lambda a, b: normalized_mutual_info_score(a, b, average_method="geometric"))


def unadjusted_rand(patch) -> None:
    """ARI without its chance adjustment (the plain Rand index)."""
    from sklearn.metrics import rand_score

    from eatlib import metrics

    patch.setattr(metrics, "adjusted_rand_score", rand_score)


def ignore_eps_warmup(patch) -> None:
    """The defenses' adversary uses full eps from the first epoch."""
    from eatlib.defenses.adversary import Adversary

    patch.setattr(Adversary, "eps", lambda self: (self.options.eps, self.options.step_size))


def members_see_the_whole_batch(patch) -> None:
    """EAT's members each train on the whole batch (the data split forgotten)."""
    import torch

    from eatlib.defenses.eat import EATStep

    patch.setattr(EATStep, "shares", lambda self, indices: [torch.arange(len(indices))] * len(self.membership))


def attack_grads_leak_into_parameters(patch) -> None:
    """The inner maximisation backpropagates into the model's parameters (its .grad accumulates)."""
    from eatlib.attacks import base

    value_and_grad = base.value_and_grad

    def leaky(model, objective, images, **options):
        value, grad = value_and_grad(model, objective, images, **options)
        with base.torch.enable_grad():
            probe = images.detach().requires_grad_(False)
            model(probe).sum().mul(1e-3).backward()
        return value, grad

    patch.setattr(base, "value_and_grad", leaky)


ATTACKS = "tests/test_attacks.py"
METRICS = "tests/test_metrics.py"
EAT = "tests/test_eat.py"
MUTATIONS: dict[str, tuple[Callable, list[str]]] = {
    "objective_sign_flipped": (flip_objective_sign, [
        f"{ATTACKS}::test_attacks_raise_their_objective_above_clean_and_pgd_beats_fgsm"]),
    "pgd_no_projection": (drop_projection, [f"{ATTACKS}::test_every_output_is_inside_the_budget_and_in_0_1"]),
    "kmeans_seed_ignored": (ignore_kmeans_seed, [
        f"{METRICS}::test_cluster_metrics_are_deterministic_for_a_seed_and_the_seed_matters"]),
    "nmi_geometric_mean": (geometric_nmi, [
        f"{METRICS}::test_cluster_metrics_match_hand_computed_nmi_and_ari_of_one_shared_kmeans"]),
    "ari_without_chance_adjustment": (unadjusted_rand, [
        f"{METRICS}::test_cluster_metrics_match_hand_computed_nmi_and_ari_of_one_shared_kmeans"]),
    "eps_warmup_ignored": (ignore_eps_warmup, [
        f"{EAT}::test_eat_trains_through_the_shared_trainer_with_eps_warm_up",
        "tests/test_defenses.py::test_adversarial_steps_report_the_eps_of_each_epoch_for_the_history"]),
    "eat_members_see_the_whole_batch": (members_see_the_whole_batch, [
        f"{EAT}::test_members_learn_only_from_their_share_under_every_transfer_through_fit"]),
    "attack_grads_leak_into_parameters": (attack_grads_leak_into_parameters, [
        f"{ATTACKS}::test_the_model_mode_parameters_buffers_and_grads_are_untouched",
        f"{EAT}::test_members_learn_only_from_their_share_under_every_transfer_through_fit"]),
}


# ------------------------------------------------------------------------------------------------- the harness

class _Failures:
    """pytest plugin: the node ids of the tests that failed."""

    def __init__(self):
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report.nodeid)


def _child(name: str) -> int:
    """In this process: apply mutation ``name`` (or none for "-") and run its tests; print the failures."""
    import pytest

    tests = sorted({t for _, ts in MUTATIONS.values() for t in ts}) if name == "-" else MUTATIONS[name][1]
    plugin = _Failures()
    with pytest.MonkeyPatch.context() as patch:
        if name != "-":
            MUTATIONS[name][0](patch)
        code = pytest.main(["-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests], plugins=[plugin])
    print("MUTATION-RESULT " + json.dumps({"failed": plugin.failed, "exit": int(code)}))
    return 0


def _run(name: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, "--child", name], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MUTATION-RESULT ")]
    if not lines:
        output = done.stdout[-2000:] + done.stderr[-2000:]
        raise RuntimeError(f"mutation {name}: the child produced no result:\n{output}")
    return json.loads(lines[-1].removeprefix("MUTATION-RESULT "))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return _child(argv[1])
    names = argv or list(MUTATIONS)
    unknown = [n for n in names if n not in MUTATIONS]
    if unknown:
        print(f"unknown mutation(s) {unknown}; allowed: {sorted(MUTATIONS)}", file=sys.stderr)
        return 2
    baseline = _run("-")
    if baseline["failed"] or baseline["exit"] != 0:
        print(f"the unmutated tests fail already: {baseline['failed']}", file=sys.stderr)
        return 1
    survivors = []
    for name in names:
        failed = _run(name)["failed"]
        print(f"{name}: {'caught by ' + ', '.join(failed) if failed else 'SURVIVED (no test failed)'}", flush=True)
        if not failed:
            survivors.append(name)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
