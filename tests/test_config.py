"""params.yaml validation: bad input fails before any work, naming the key and what is allowed."""

import pytest
import yaml

from eatlib.load import load_params
from eatlib.params import ConfigError, Params, TrainConfig, from_dict, parse_number


def minimal(**overrides):
    data = {
        "data": {"name": "glyphs"},
        "models": {"small": {"arch": "cnn4"}},
        "pipeline": {"archs": ["small"]},
        "attacks": {"headline": {"name": "pgd", "eps": "8/255", "alpha": "2/255", "steps": 10}},
    }
    data.update(overrides)
    return data


def test_fractions_are_numbers():
    assert parse_number("8/255", "eps") == pytest.approx(8 / 255)
    assert parse_number(0.5, "eps") == 0.5
    with pytest.raises(ConfigError, match="eps"):
        parse_number("eight", "eps")


def test_defaults_fill_in_and_nested_sections_are_typed():
    params = from_dict(Params, minimal(train={"epochs": 3, "loss": {"proxy_lr_multiplier": 10}}))
    assert params.train.epochs == 3 and params.train.loss.proxy_lr_multiplier == 10.0
    assert params.model("small").arch == "cnn4"
    assert params.train.lr == TrainConfig().lr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"trian": {}}, r"unknown key\(s\) \['trian'\]; allowed keys: .*train"),
        ({"train": {"epochs": 0}}, r"train\.epochs: got 0"),
        ({"train": {"batch_size": 10, "samples_per_class": 4}}, r"train\.batch_size: got 10; allowed: a multiple"),
        ({"train": {"lr": "fast"}}, r"train\.lr: expected a number"),
        ({"train": {"loss": {"name": "arcface"}}}, r"train\.loss\.name: got 'arcface'; allowed: .*proxy_anchor"),
        ({"data": {"name": "imagenet"}}, r"data\.name: got 'imagenet'; allowed: .*glyphs"),
        ({"models": {"small": {"arch": "vgg"}}}, r"models\.small\.arch: got 'vgg'; allowed: .*cnn4"),
        ({"models": {"small": {}}}, r"models\.small\.arch: required key is missing"),
        ({"device": "tpu"}, r"device: got 'tpu'"),
        ({"pretrain": {"epocs": 5}}, r"pretrain: got \['epocs'\]; allowed: keys of train"),
        ({"pretrain": {"epochs": 5, "lr_milestones": [15]}}, r"pretrain\.lr_milestones: got \[15\]"),
        ({"train": {"freeze_bn": "yes"}}, r"train\.freeze_bn: got 'yes'; allowed: true or false"),
        ({"pipeline": {"archs": ["big"]}}, r"pipeline\.archs: got \['big'\]; allowed: keys of models"),
        ({"pipeline": {"archs": ["small"], "compared": ["pgd_at", "eat"]}}, r"compared: .*includes standard"),
        ({"pipeline": {"archs": ["small"], "compared": ["standard", "pgd_at", "eat", "magic"]}},
         r"pipeline\.compared\[3\]: got 'magic'"),
        ({"pipeline": {"archs": ["small"], "trained_defenses": ["standard"]}},
         r"unknown key\(s\) \['trained_defenses'\]"),
        ({"pipeline": {"archs": ["small"], "seeds": [1, 2]}}, r"pipeline\.seeds: .*includes the top-level seed"),
        ({"pipeline": {"archs": ["small"], "seeds": [0, 0]}}, r"pipeline\.seeds: .*distinct integers"),
        ({"pipeline": {"archs": ["small"], "single_seed": ["eat"]}}, r"single_seed: got \['eat'\]"),
        ({"attacks": {"headline": {"name": "a"}, "protocol": "strongest"}}, r"attacks\.protocol: got 'strongest'"),
        ({"attacks": {"headline": {"name": "a"}, "strong": [{"name": "b", "eps": "16/255"}]}},
         r"attacks\.strong\[0\]: .*the headline's norm .*one threat model"),
        ({"attacks": {"headline": {"name": "a"}, "strong": [{"name": "b", "source": "eat"}]}},
         r"attacks\.strong\[0\]\.source: got 'eat'"),
        ({"defenses": {"eat": {"members": 1}}}, r"defenses\.eat\.members: got 1"),
        ({"defenses": {"eat": {"split": "halves"}}}, r"defenses\.eat\.split: got 'halves'"),
        ({"defenses": {"armor": {}}}, r"defenses: got 'armor'; allowed: .*'eat'.*'randomization'"),
        ({"attacks": {"headline": {"eps": -1}}}, r"attacks\.headline: .*eps"),
        ({"attacks": {"headline": {"optimizer": "pgd"}, "suite": [{"objective": "vibes"}]}}, r"attacks\.suite\[0\]"),
        ({"attacks": {"headline": {"name": "a"}, "suite": [{"name": "a"}]}}, r"attacks\.suite: .*distinct names"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Params, minimal(**overrides))


def test_unknown_architecture_name_is_reported_with_the_defined_ones():
    params = from_dict(Params, minimal())
    with pytest.raises(ConfigError, match=r"no architecture named 'big'; defined: \['small'\]"):
        params.model("big")


def test_load_params_reads_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(minimal(seed=7)))
    assert load_params(path).seed == 7
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "missing.yaml")


def test_pretrain_is_train_with_its_own_keys_changed():
    params = from_dict(Params, minimal(train={"epochs": 10, "lr": 0.001, "lr_milestones": [8]},
                                       pretrain={"epochs": 20, "lr": 0.003, "lr_milestones": [15]}))
    schedule = params.pretrain_config()
    assert (schedule.epochs, schedule.lr, schedule.lr_milestones) == (20, 0.003, [15])
    assert schedule.batch_size == params.train.batch_size and schedule.loss == params.train.loss
    with pytest.raises(ConfigError, match="pretrain: null"):
        from_dict(Params, minimal()).pretrain_config()
