"""The structure the rest relies on: params is the ground floor, names come from one registry each, and an
unknown name is an error (never a fallback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from eatlib import params, report
from eatlib.attacks import OBJECTIVES, OPTIMIZERS, SpecError, build_attack, build_objective, validate_spec
from eatlib.attacks import spec as spec_module
from eatlib.attacks.optimizers import PGD
from eatlib.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_params_imports_no_other_eatlib_module_and_no_torch():
    code = "import sys, eatlib.params; print(sorted(m for m in sys.modules if m.startswith(('eatlib', 'torch'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['eatlib', 'eatlib.params']"


def test_the_registries_params_validates_by_are_filled_by_the_modules_that_define_the_names():
    from eatlib.data import DATASETS
    from eatlib.defenses import INFERENCE_DEFENSES, TRAINING_DEFENSES
    from eatlib.losses import LOSSES
    from eatlib.models import ARCHITECTURES

    assert set(params.DATASETS) == set(DATASETS)
    assert set(params.ARCHITECTURES) == set(ARCHITECTURES)
    assert set(params.LOSSES) == set(LOSSES)
    assert {n: params.TRAINING_DEFENSES[n] for n in params.TRAINING_DEFENSES} == {
        n: e.options for n, e in TRAINING_DEFENSES.items()}
    assert {n: params.INFERENCE_DEFENSES[n] for n in params.INFERENCE_DEFENSES} == {
        n: e.options for n, e in INFERENCE_DEFENSES.items()}
    assert params.ATTACK_SPECS["spec"] is validate_spec


def test_an_empty_registry_imports_the_module_that_fills_it():
    import json  # stands in for eatlib.data: importing it fills nothing here, so the table stays empty

    table = params.Registry("datasets", "json")
    with pytest.raises(params.ConfigError, match=r"data\.name: got 'glyphs'; allowed: one of \[\]"):
        table.lookup("glyphs", "data.name")
    assert json  # imported, as the table asked


def test_parameters_build_in_a_fresh_interpreter_without_eatlib_load():
    # A user who imports only eatlib.params: each registry imports the module that fills it on first use.
    code = ("from eatlib.params import TrainConfig, DataConfig, from_dict, Params, load_yaml\n"
            "TrainConfig(); DataConfig()\n"
            "p = from_dict(Params, load_yaml('params.yaml'))\n"
            "print(p.train.loss.name, p.data.name)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["proxy_anchor", "glyphs"]


def test_spec_names_are_the_attack_registries():
    assert spec_module._COMMON["optimizer"][2] is OPTIMIZERS and spec_module._COMMON["objective"][2] is OBJECTIVES

    # An optimiser added to the registry is a spec name at once, with its own keys, and builds as itself.
    class Sloth(PGD):
        spec_keys = {"steps": (1, "int", None)}

        def __init__(self, model, objective, *, steps, **common):
            super().__init__(model, objective, steps=steps, alpha=common["eps"], **common)

    OPTIMIZERS["sloth"] = Sloth
    try:
        spec = {"optimizer": "sloth", "objective": "embedding_shift", "steps": 2}
        attack = build_attack(spec, build_model("cnn4", embedding_dim=8, width=4))
        assert type(attack) is Sloth and attack.steps == 2
        with pytest.raises(SpecError, match=r"unknown attack spec key\(s\) \['alpha'\]"):
            validate_spec({**spec, "alpha": 0.1})
    finally:
        del OPTIMIZERS["sloth"]


@pytest.mark.parametrize(("key", "name"), [("optimizer", "adam"), ("objective", "vibes")])
def test_an_unknown_attack_name_is_an_error_naming_the_allowed_ones(key, name):
    allowed = OPTIMIZERS if key == "optimizer" else OBJECTIVES
    with pytest.raises(SpecError, match=rf"'{key}' must be one of {list(allowed)!r}".replace("[", r"\[")):
        build_attack({key: name}, build_model("cnn4", embedding_dim=8, width=4))


def test_every_registered_name_builds_its_own_class():
    model = build_model("cnn4", embedding_dim=8, width=4)
    for name, cls in OPTIMIZERS.items():
        assert type(build_attack({"optimizer": name, "objective": "embedding_shift"}, model)) is cls
    for name, cls in OBJECTIVES.items():
        assert type(build_objective({"objective": name})) is cls


def test_one_eps_reader_and_writer():
    assert spec_module.parse_eps is params.parse_eps and spec_module.format_eps is params.format_eps
    assert report.format_eps is params.format_eps
    assert [params.format_eps(e) for e in (8 / 255, 0.5, "8/255")] == ["8/255", "0.5", "8/255"]
    assert params.parse_eps("8/255") == pytest.approx(8 / 255) and params.parse_eps(0.5) == 0.5
    for bad in (-1, "eight", float("inf"), True):
        with pytest.raises(params.ConfigError, match="eps"):
            params.parse_eps(bad)
