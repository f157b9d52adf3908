"""The paper-scale profile (params-paper.yaml): what it sets, that `make paper`'s -S overrides give DVC exactly
that, and one tiny run of the whole pipeline with it on a fake CUB-200-2011 layout (224px, no download)."""

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from fake_layouts import make_fake_cub200
from test_pipeline_smoke import ROOT, _run, reproduce

from eatlib.config import Params, from_dict
from eatlib.profiles import load_profile, overlay, overrides

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
PAPER = load_profile(ROOT / "params-paper.yaml")


def test_the_paper_profile_is_the_protocol_of_paper_md():
    params = from_dict(Params, overlay(PARAMS, PAPER))
    assert params.data.name == "cub200" and params.data.image_size == 224 and params.data.options == {}
    for arch, backbone in (("resnet", "resnet18"), ("mobilenet", "mobilenet_v2")):
        model = params.model(arch)
        assert (model.arch, model.embedding_dim, model.pretrained, model.options) == (backbone, 512, True, {})
    loss = params.train.loss
    assert loss.options == {"margin": 0.1, "alpha": 32} and loss.proxy_lr_multiplier == 100
    assert params.attacks.subset is None and params.attacks.headline["eps"] == "8/255"
    assert params.defenses == from_dict(Params, PARAMS).defenses  # defenses and attacks are shared


def test_overlay_replaces_values_and_empty_mappings_and_refuses_unknown_keys():
    base = {"a": {"x": 1, "y": {"deep": 2}}, "b": [1]}
    assert overlay(base, {"a": {"x": 5}, "b": [2, 3]}) == {"a": {"x": 5, "y": {"deep": 2}}, "b": [2, 3]}
    assert overlay(base, {"a": {"y": {}}}) == {"a": {"x": 1, "y": {}}, "b": [1]}
    assert base == {"a": {"x": 1, "y": {"deep": 2}}, "b": [1]}  # not modified
    with pytest.raises(KeyError, match="a.z"):
        overlay(base, {"a": {"z": 1}})
    assert overrides({"a": {"y": {}}, "b": [2, 3]}, base) == ["-S", "~a.y.deep", "-S", "b=[2,3]"]


def test_dvc_exp_run_with_the_printed_overrides_writes_the_overlaid_params(tmp_path):
    # DVC merges mappings and parses values itself: check that `make paper`'s command line gives DVC exactly
    # overlay(params.yaml, params-paper.yaml).
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"show": {
        "cmd": "cp params.yaml seen.yaml", "params": sorted(PAPER), "outs": ["seen.yaml"]}}}))
    _run(["git", "init", "-q"], tmp_path, env)
    _run([dvc, "init", "-q"], tmp_path, env)
    _run([*git, "add", "-A"], tmp_path, env)
    _run([*git, "commit", "-qm", "init"], tmp_path, env)
    _run([dvc, "exp", "run", *overrides(PAPER, PARAMS)], tmp_path, env)
    assert yaml.safe_load((tmp_path / "seen.yaml").read_text()) == overlay(PARAMS, PAPER)


def paper_smoke_profile() -> dict:
    """The paper profile at 224px on a fake CUB, shrunk to seconds: untrained-from-ImageNet backbones (tests never
    download), one epoch, standard + EAT, one-step attacks on a few images."""
    params = overlay(PARAMS, PAPER)
    for model in params["models"].values():
        model.update(pretrained=False, embedding_dim=16)
    params["pipeline"] = {"archs": ["resnet", "mobilenet"], "trained_defenses": ["standard", "eat"],
                          "inference_defenses": []}
    params["data"]["val_fraction"] = 0.2
    params["train"].update(epochs=1, batch_size=8, samples_per_class=4, lr_milestones=[], eval_batch_size=8)
    params["pretrain"] = {"epochs": 1}
    params["defenses"]["eat"].update(members=2)
    params["defenses"]["eat"]["attack"].update(steps=1, warmup_epochs=0)
    params["attacks"].update(subset=12, batch_size=12, sweep_eps=["8/255"])
    params["attacks"]["headline"]["steps"] = 1
    params["attacks"]["suite"] = []
    params["ablation"]["variants"] = {"eat_aggregate_mean": {"defense": "eat", "options": {"aggregate": "mean"}}}
    return params


def test_the_paper_profile_runs_end_to_end_on_a_fake_cub(tmp_path):
    fake = {}
    reproduce(tmp_path, paper_smoke_profile(), prepare=lambda copy: fake.setdefault(
        "cub", make_fake_cub200(copy / "data", train_classes=5, test_classes=4, images_per_class=4)))
    summary = json.loads((tmp_path / "results/data/summary.json").read_text())
    assert summary["dataset"] == "cub200" and summary["image_size"] == 224
    assert summary["splits"]["test"] == {"images": fake["cub"].test_images, "classes": 4}
    for arch in ("resnet", "mobilenet"):
        result = json.loads((tmp_path / f"results/metrics/{arch}/eat.json").read_text())
        assert result["config"]["model"]["embedding_dim"] == 16 and 0 <= result["clean"]["nmi"] <= 1
    main = (tmp_path / "results/tables/main.md").read_text()
    assert "| eat |" in main and (tmp_path / "results/figures/robustness_eps.png").stat().st_size > 1000
