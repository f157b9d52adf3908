"""Mutations of the shipped params.yaml: each bad value fails in load_params, before any work, with a ConfigError
that names the dotted key (and the bad value or name)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from eatlib.load import load_params
from eatlib.params import ConfigError

SHIPPED = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
DELETE = object()

# (path into params.yaml, new value or DELETE, what the message must name: the dotted key, then the value).
MUTATIONS = [
    # top level
    ("seed", -1, ["seed", "-1"]),
    ("seed", "zero", ["seed", "'zero'"]),
    ("seed", 1.5, ["seed", "1.5"]),
    ("device", "tpu", ["device", "'tpu'"]),
    ("sed", 0, ["unknown key(s) ['sed']"]),
    ("data", DELETE, ["data", "required"]),
    # data and the glyphs generator's options
    ("data.name", "imagenet", ["data.name", "'imagenet'"]),
    ("data.name", ["glyphs"], ["data.name", "['glyphs']"]),
    ("data.image_size", 8, ["data.image_size", "8"]),
    ("data.image_size", "32", ["data.image_size", "'32'"]),
    ("data.val_fraction", 1.0, ["data.val_fraction", "1.0"]),
    ("data.colour", "red", ["data", "'colour'"]),
    ("data.options.num_clases", 200, ["data.options", "'num_clases'"]),
    ("data.options.num_classes", "many", ["data.options.num_classes", "'many'"]),
    ("data.options.num_classes", 2, ["data.options", "num_classes"]),
    ("data.options.rotation_deg", 400, ["data.options", "rotation_deg"]),
    ("data.options.image_size", 64, ["data.options", "'image_size'"]),
    ("data.options.scale_range", 0.5, ["data.options.scale_range", "0.5"]),
    # models and the backbones' options
    ("models.resnet.arch", "vgg", ["models.resnet.arch", "'vgg'"]),
    ("models.resnet.embedding_dim", 1, ["models.resnet.embedding_dim", "1"]),
    ("models.resnet.depth", 18, ["models.resnet", "'depth'"]),
    ("models.resnet.options.widht", 16, ["models.resnet.options", "'widht'"]),
    ("models.resnet.options.width", "wide", ["models.resnet.options.width", "'wide'"]),
    ("models.resnet.options.stem", 3, ["models.resnet.options.stem", "3"]),
    ("models.mobilenet.options.width_mult", True, ["models.mobilenet.options.width_mult", "True"]),
    ("models.mobilenet.pretrained", "no", ["models.mobilenet.pretrained", "'no'"]),
    # train, its loss and the loss's options
    ("train.epochs", 0, ["train.epochs", "0"]),
    ("train.lr", -1, ["train.lr", "-1"]),
    ("train.batch_size", 121, ["train.batch_size", "121"]),
    ("train.lr_milestones", [20], ["train.lr_milestones", "[20]"]),
    ("train.optimiser", "sgd", ["train", "'optimiser'"]),
    ("train.augment.shift", 0.9, ["train.augment.shift", "0.9"]),
    ("train.augment.scale", [1.1, 0.9], ["train.augment.scale", "[1.1, 0.9]"]),
    ("train.loss.name", "arcface", ["train.loss.name", "'arcface'"]),
    ("train.loss.proxy_lr_multiplier", 0, ["train.loss.proxy_lr_multiplier", "0"]),
    ("train.loss.options.margin", "wide", ["train.loss.options.margin", "'wide'"]),
    ("train.loss.options.alpha", True, ["train.loss.options.alpha", "True"]),
    ("train.loss.options.beta", 1, ["train.loss.options", "'beta'"]),
    # pretrain, evaluation
    ("pretrain.epocs", 5, ["pretrain", "'epocs'"]),
    ("pretrain.lr_milestones", [25], ["pretrain.lr_milestones", "[25]"]),
    ("evaluation.recall_ks", [0], ["evaluation.recall_ks", "[0]"]),
    ("evaluation.batch_size", 0, ["evaluation.batch_size", "0"]),
    # pipeline
    ("pipeline.archs", ["vgg"], ["pipeline.archs", "'vgg'"]),
    ("pipeline.compared", ["standard", "pgd_at", "eat", "madry"], ["pipeline.compared[3]", "'madry'"]),
    ("pipeline.single_seed", ["madry"], ["pipeline.single_seed[0]", "'madry'"]),
    ("pipeline.seeds", [5], ["pipeline.seeds", "[5]"]),
    ("pipeline.inference_defenses", ["median"], ["pipeline.inference_defenses[0]", "'median'"]),
    # defenses
    ("defenses.armor", {}, ["defenses", "'armor'"]),
    ("defenses.eat.members", 1, ["defenses.eat.members", "1"]),
    ("defenses.eat.split", "halves", ["defenses.eat.split", "'halves'"]),
    ("defenses.eat.attack.eps", "big", ["defenses.eat.attack.eps", "'big'"]),
    ("defenses.pgd_at.attack.stepz", 5, ["defenses.pgd_at.attack", "'stepz'"]),
    ("defenses.mixup_inference.lam", 2, ["defenses.mixup_inference.lam", "2"]),
    ("defenses.adp.adversarial", "yes", ["defenses.adp.adversarial", "'yes'"]),
    # attacks
    ("attacks.headline.eps", -1, ["attacks.headline", "'eps'", "-1"]),
    ("attacks.headline.optimizer", "adam", ["attacks.headline", "'optimizer'", "'adam'"]),
    ("attacks.headline.optimizer", ["pgd"], ["attacks.headline", "'optimizer'", "['pgd']"]),
    ("attacks.headline.objective", "vibes", ["attacks.headline", "'objective'", "'vibes'"]),
    ("attacks.headline.steps", 0, ["attacks.headline", "'steps'", "0"]),
    ("attacks.suite.0.target", "farthest", ["attacks.suite[0]", "'target'", "'farthest'"]),
    ("attacks.suite.1.decay", 1.0, ["attacks.suite[1]", "'decay'"]),
    ("attacks.sweep_eps", [0], ["attacks.sweep_eps", "[0.0]"]),
    ("attacks.sweep_eps", ["big"], ["attacks.sweep_eps[0]", "'big'"]),
    ("attacks.subset", 1, ["attacks.subset", "1"]),
    ("attacks.eot_samples", 0, ["attacks.eot_samples", "0"]),
    # ablation
    ("ablation.arch", "vgg", ["ablation.arch", "'vgg'"]),
    ("ablation.variants.eat_aggregate_mean.defense", "madry",
     ["ablation.variants.eat_aggregate_mean.defense", "'madry'"]),
    ("ablation.variants.eat_aggregate_mean.options.members", 1,
     ["ablation.variants.eat_aggregate_mean.options.members", "1"]),
    ("ablation.variants.eat_aggregate_mean.options.splt", "none",
     ["ablation.variants.eat_aggregate_mean.options", "'splt'"]),
    ("ablation.variants.eat_aggregate_mean.match_compute", "eat_x",
     ["ablation.variants.eat_aggregate_mean.match_compute", "'eat_x'"]),
    # readings
    ("readings.arch", "vgg", ["readings.arch", "'vgg'"]),
    ("readings.seeds", [1, 1], ["readings.seeds", "[1, 1]"]),
    ("readings.variants.transfer_others.transfer", "selfish",
     ["readings.variants.transfer_others", "'selfish'"]),
    ("readings.variants.transfer_others.membrs", 5, ["readings.variants.transfer_others", "'membrs'"]),
]


def mutate(params: dict, path: str, value) -> dict:
    """A deep copy of ``params`` with the value at dotted ``path`` replaced (list items by index), or deleted."""
    out = copy.deepcopy(params)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def test_the_shipped_params_load(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(SHIPPED))
    assert load_params(path).seed == SHIPPED["seed"]


def test_there_are_at_least_40_mutations_at_every_level():
    assert len(MUTATIONS) >= 40
    assert {path.split(".")[0] for path, _, _ in MUTATIONS} >= set(SHIPPED)


@pytest.mark.parametrize(("path", "value", "named"), MUTATIONS, ids=[f"{p}={v!r}" for p, v, _ in MUTATIONS])
def test_a_bad_value_fails_at_load_naming_its_key(tmp_path, path, value, named):
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(mutate(SHIPPED, path, value)))
    with pytest.raises(ConfigError) as caught:
        load_params(file)
    message = str(caught.value)
    for part in named:
        assert part in message, f"{path}={value!r}: the message does not name {part!r}: {message}"
