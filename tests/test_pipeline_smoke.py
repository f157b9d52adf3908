"""One smoke run of the whole DVC pipeline (every stage, tiny profile) in a temporary copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_profile(params: dict) -> dict:
    """params.yaml shrunk to seconds per stage: a few classes, tiny networks, one-step attacks."""
    params["data"]["options"] = {"num_classes": 12, "images_per_class": 8}
    # The pipeline's plumbing is under test here, not the backbones (tests/test_models.py): both families get the
    # fastest network.
    params["models"] = {name: {"arch": "cnn4", "embedding_dim": 16, "options": {"width": 4}}
                        for name in ("resnet", "mobilenet")}
    params["pipeline"] = {"archs": ["resnet", "mobilenet"], "trained_defenses": ["standard", "pgd_at", "eat"],
                          "inference_defenses": ["randomization"]}
    params["train"].update(epochs=2, batch_size=8, samples_per_class=4, lr_milestones=[2])
    params["pretrain"] = {"epochs": 1, "lr_milestones": []}
    for defense in ("pgd_at", "eat"):
        params["defenses"][defense]["attack"].update(steps=1, warmup_epochs=1)
    params["defenses"]["eat"]["members"] = 2
    params["attacks"].update(subset=24, eot_samples=2, sweep_eps=["4/255", "8/255"], batch_size=24)
    params["attacks"]["headline"]["steps"] = 1
    params["attacks"]["suite"] = [{"name": "fgsm_centroid_random", "optimizer": "fgsm", "eps": "8/255",
                                   "objective": "centroid", "target": "random"}]
    params["ablation"]["variants"] = {"pgd_at_compute_matched": {"defense": "pgd_at", "match_compute": "eat"},
                                      "eat_aggregate_mean": {"defense": "eat", "options": {"aggregate": "mean"}}}
    return params


def _run(args, cwd, env):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def reproduce(copy: Path, params: dict, prepare=None):
    """Copy the tracked files to ``copy``, write ``params`` as its params.yaml, call ``prepare(copy)`` (e.g. to
    place a dataset under data/), and run `dvc repro` there as `make repro` does. Returns (env, dvc command)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        # The committed results and lock of the full run are what the copy must produce, not start from.
        if (ROOT / name).is_file() and not name.startswith("results/") and name != "dvc.lock":
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    dvc = [str(Path(sys.executable).parent / "dvc")]
    _run([*dvc, "config", "core.no_scm", "true"], copy, env)
    (copy / "data").mkdir(exist_ok=True)
    if prepare is not None:
        prepare(copy)
    _run([*dvc, "add", "-q", "data"], copy, env)  # what `make repro` does for an empty data/
    _run([*dvc, "repro"], copy, env)
    return env, dvc


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the tracked files, with the tiny profile, after one `dvc repro`."""
    copy = tmp_path_factory.mktemp("repo")
    params = tiny_profile(yaml.safe_load((ROOT / "params.yaml").read_text()))
    env, dvc = reproduce(copy, params)
    return copy, params, env, dvc


def test_every_declared_output_exists_and_parses(repo):
    copy, params, _, _ = repo
    archs, trained = params["pipeline"]["archs"], params["pipeline"]["trained_defenses"]
    defenses = trained + params["pipeline"]["inference_defenses"]
    for arch in archs:
        for defense in defenses:
            result = json.loads((copy / f"results/metrics/{arch}/{defense}.json").read_text())
            for section in ("clean", "worst", *(f"attacks.{a}" for a in result["attacks"])):
                scores = result
                for key in section.split("."):
                    scores = scores[key]
                assert {"nmi", "ami", "ari", "f1", "purity", "recall@1"} <= set(scores), (arch, defense, section)
            if result["randomized"]:  # EOT makes the sweep eot_samples times dearer: off unless asked
                assert "sweep" not in result and not params["attacks"]["eot_sweep"]
            else:
                assert len(result["sweep"]["metrics"]) == len(params["attacks"]["sweep_eps"])
        for defense in trained:
            assert (copy / f"results/models/{arch}/{defense}.pt").stat().st_size > 0
        assert (copy / f"results/figures/training_{arch}.png").stat().st_size > 0
    eat = json.loads((copy / "results/metrics/resnet/eat.json").read_text())
    assert sorted(eat["members"]) == ["0", "1"]
    ablation = json.loads((copy / "results/ablation/pgd_at_compute_matched.json").read_text())
    assert ablation["variant"]["match_compute"] == "eat"
    # Aggregation alone is not retrained: the main EAT run's members, its cost, and no model of its own.
    mean = json.loads((copy / "results/ablation/eat_aggregate_mean.json").read_text())
    assert mean["reuses"].endswith("models/resnet/eat.pt") and mean["cost"] == eat["cost"]
    assert not (copy / "results/ablation/models/eat_aggregate_mean.pt").exists()
    assert mean["clean"] != eat["clean"]  # mean of the members' embeddings, not their concatenation
    for table in ("main", "ablation"):
        for ext in ("md", "tex", "csv"):
            assert (copy / f"results/tables/{table}.{ext}").stat().st_size > 0
    main = (copy / "results/tables/main.md").read_text()
    assert all(f"| {defense} |" in main for defense in defenses)
    for figure in ("robustness_eps", "ablation", "contact_sheet", "tsne_resnet_standard", "tsne_resnet_eat"):
        assert (copy / f"results/figures/{figure}.png").stat().st_size > 1000
    timings = json.loads((copy / "results/timings.json").read_text())
    assert timings["total"] > 0 and "train/resnet/eat" in timings
    for notebook in (copy / "results/notebooks").rglob("*.ipynb"):
        assert json.loads(notebook.read_text())["cells"], notebook


def test_compute_matched_baseline_spent_the_budget_of_eat(repo):
    copy, *_ = repo
    eat = json.loads((copy / "results/metrics/resnet/eat.json").read_text())["cost"]
    matched = json.loads((copy / "results/ablation/pgd_at_compute_matched.json").read_text())["cost"]
    pgd_at = json.loads((copy / "results/metrics/resnet/pgd_at.json").read_text())["cost"]
    per_epoch = pgd_at["forward_backward_images"] / pgd_at["epochs"]
    assert abs(matched["forward_backward_images"] - eat["forward_backward_images"]) <= per_epoch / 2


def test_a_second_repro_does_nothing_and_status_is_clean(repo):
    copy, _, env, dvc = repo
    out = _run([*dvc, "repro"], copy, env)
    assert "Running stage" not in out
    assert "up to date" in _run([*dvc, "status"], copy, env)


def test_editing_one_eat_param_reruns_only_the_stages_that_read_it(repo):
    copy, params, env, dvc = repo
    params["defenses"]["eat"]["transfer"] = "ensemble"
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(_run([*dvc, "status", "--json"], copy, env)))
    # The ablation reads every defense's options (its variants are built over them); attack stages follow the
    # retrained models once those change.
    assert changed == {"train@resnet-eat", "train@mobilenet-eat", "ablation@pgd_at_compute_matched",
                       "ablation@eat_aggregate_mean"}
