"""The paper-scale profile (params-paper.yaml): what it sets, that `make paper`'s -S overrides give DVC exactly
that, and one tiny run of the whole pipeline with it on a fake CUB-200-2011 layout (224px, no download)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fake_layouts import make_fake_cub200
from test_pipeline_smoke import ROOT, _run, git_copy

import eatlib.load  # noqa: F401  (registers the names and options that Params validates)
from eatlib.models import build_model
from eatlib.params import Params, from_dict
from eatlib.profiles import block_mappings, emptied_mappings, load_profile, overlay, overrides
from eatlib.profiles import main as profiles_main

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
PAPER = load_profile(ROOT / "params-paper.yaml")
pytestmark = pytest.mark.slow


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


def test_the_profiles_mobilenet_embeds_at_224px():
    config = from_dict(Params, overlay(PARAMS, PAPER)).model("mobilenet")
    torch.manual_seed(0)
    model = build_model(config.arch, embedding_dim=config.embedding_dim, image_size=224, **config.options).eval()
    with torch.no_grad():
        embedded = model(torch.rand(1, 3, 224, 224))
    assert embedded.shape == (1, 512) and abs(float(embedded.norm()) - 1) < 1e-5


def test_overlay_replaces_values_and_empty_mappings_and_refuses_unknown_keys():
    base = {"a": {"x": 1, "y": {"deep": 2}}, "b": [1]}
    assert overlay(base, {"a": {"x": 5}, "b": [2, 3]}) == {"a": {"x": 5, "y": {"deep": 2}}, "b": [2, 3]}
    assert overlay(base, {"a": {"y": {}}}) == {"a": {"x": 1, "y": {}}, "b": [1]}
    assert base == {"a": {"x": 1, "y": {"deep": 2}}, "b": [1]}  # not modified
    with pytest.raises(KeyError, match="a.z"):
        overlay(base, {"a": {"z": 1}})
    assert overrides({"a": {"y": {}}, "b": [2, 3]}, base) == ["-S", "~a.y.deep", "-S", "b=[2,3]"]


def test_a_mapping_the_profile_empties_must_be_a_flow_mapping_in_params_yaml(tmp_path, capsys):
    # DVC cannot delete every key of a commented block mapping: say so before `dvc exp run` corrupts nothing.
    assert emptied_mappings(PAPER, PARAMS) == ["data.options", "models.resnet.options", "models.mobilenet.options"]
    shipped = (ROOT / "params.yaml").read_text()
    assert block_mappings(shipped, emptied_mappings(PAPER, PARAMS)) == []
    block = shipped.replace("  options: {num_classes: 200, images_per_class: 40}\n",
                            "  options:\n    num_classes: 200   # a comment\n    images_per_class: 40\n")
    assert block != shipped
    (tmp_path / "params.yaml").write_text(block)
    with pytest.raises(SystemExit, match=r"data.options: .*flow style"):
        profiles_main([str(ROOT / "params-paper.yaml"), "--params", str(tmp_path / "params.yaml")])
    assert capsys.readouterr().out == ""  # no overrides printed for make to run


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


def paper_smoke_overrides() -> list[str]:
    """`make paper`'s run shrunk to seconds, as extra -S arguments on top of the profile (PAPER_ARGS): untrained
    backbones (tests never download), one epoch, standard + EAT, one-step attacks on a few images."""
    paper = overlay(PARAMS, PAPER)
    shrink = {
        "models": {name: {"pretrained": False, "embedding_dim": 16} for name in paper["models"]},
        # One family: the run is about make paper's plumbing at 224px; each stage costs ~10 s of start-up alone.
        # (MobileNetV2 at the profile's 224px: test_the_profiles_mobilenet_embeds_at_224px.)
        "pipeline": {"archs": ["resnet"], "seeds": [0], "compared": ["standard", "pgd_at", "eat"],
                     "single_seed": [], "inference_defenses": []},
        "data": {"val_fraction": 0.2},
        "train": {"epochs": 1, "batch_size": 8, "samples_per_class": 4, "lr_milestones": []},
        "pretrain": {"epochs": 1, "lr_milestones": []},
        "defenses": {"eat": {"members": 2, "attack": {"steps": 1, "warmup_epochs": 0}},
                     "pgd_at": {"attack": {"steps": 1, "warmup_epochs": 0}}},
        # The standard protocol: the strong one's ~100 passes per image at 224px would take minutes here.
        "attacks": {"subset": 12, "batch_size": 12, "sweep_eps": ["8/255"], "headline": {"steps": 1}, "suite": [],
                    "protocol": "standard", "kmeans_seeds": 2, "bootstrap": 10},
    }
    args = overrides(shrink, paper)
    # Deleting some keys of a block mapping is fine for DVC; one variant is kept.
    for variant in paper["ablation"]["variants"]:
        if variant != "eat_aggregate_mean":
            args += ["-S", f"~ablation.variants.{variant}"]
    return args


def test_make_paper_reaches_the_dataset_check_and_runs_with_the_shipped_params(tmp_path):
    env = git_copy(tmp_path)
    assert (tmp_path / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()  # comments and all
    venv = Path(sys.executable).parent.parent
    make = ["make", "-o", str(venv / ".installed"), "paper", f"VENV={venv}", "DATASET=cub200"]
    missing = subprocess.run(make, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "cub200" in missing.stderr and "data/cub200" in missing.stderr
    assert "Running stage" not in missing.stdout  # refused before any work

    fake = make_fake_cub200(tmp_path / "data", train_classes=5, test_classes=4, images_per_class=4)
    _run([str(Path(sys.executable).parent / "dvc"), "add", "-q", "data"], tmp_path, env)
    _run(["git", "add", "-A"], tmp_path, env)
    _run(["git", "commit", "-qm", "data"], tmp_path, env)
    _run([*make, f"PAPER_ARGS={' '.join(paper_smoke_overrides())}"], tmp_path, env)
    summary = json.loads((tmp_path / "results/data/summary.json").read_text())
    assert summary["dataset"] == "cub200" and summary["image_size"] == 224
    assert summary["splits"]["test"] == {"images": fake.test_images, "classes": 4}
    result = json.loads((tmp_path / "results/metrics/resnet/eat/seed0.json").read_text())
    assert result["config"]["model"]["embedding_dim"] == 16 and 0 <= result["clean"]["nmi"] <= 1
    assert not (tmp_path / "results/metrics/mobilenet").exists()
    main = (tmp_path / "results/tables/main.md").read_text()
    assert "| eat |" in main and (tmp_path / "results/figures/robustness_eps.png").stat().st_size > 1000
    # The experiment ran on the profile laid over the shipped file: the paper's keys, the shipped comments.
    used = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert used["data"]["name"] == "cub200" and used["data"]["options"] == {} and used["train"]["epochs"] == 1
