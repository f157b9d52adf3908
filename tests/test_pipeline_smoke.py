"""One smoke run of the whole DVC pipeline (every stage, tiny profile) in a temporary git copy of the repository,
then what a user does next: edit a parameter and re-run, `dvc exp run -S`, kill a stage and re-run it."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def tiny_profile(params: dict) -> dict:
    """params.yaml shrunk to seconds per stage: a few classes, tiny networks, one-step attacks."""
    params["data"]["options"] = {"num_classes": 12, "images_per_class": 8}
    # The pipeline's plumbing is under test here, not the backbones (tests/test_models.py): both families get the
    # fastest network.
    params["models"] = {name: {"arch": "cnn4", "embedding_dim": 16, "options": {"width": 4}}
                        for name in ("resnet", "mobilenet")}
    params["pipeline"] = {"archs": ["resnet", "mobilenet"], "seeds": [0, 1], "compared": ["standard", "pgd_at", "eat"],
                          "single_seed": [], "inference_defenses": ["randomization"]}
    params["train"].update(epochs=2, batch_size=8, samples_per_class=4, lr_milestones=[2])
    params["pretrain"] = {"epochs": 1, "lr_milestones": []}
    for defense in ("pgd_at", "eat"):
        params["defenses"][defense]["attack"].update(steps=1, warmup_epochs=1)
    # PGD-AT dearer per epoch than EAT here (3 passes per image against 2 for each member's share), so the
    # compute-matched run has a schedule of its own
    params["defenses"]["pgd_at"]["attack"]["steps"] = 2
    params["defenses"]["eat"]["members"] = 2
    params["attacks"].update(subset=24, eot_samples=2, sweep_eps=["4/255", "8/255"], batch_size=24, kmeans_seeds=2,
                             bootstrap=20)
    params["attacks"]["headline"]["steps"] = 1
    params["attacks"]["suite"] = [{"name": "fgsm_centroid_random", "optimizer": "fgsm", "eps": "8/255",
                                   "objective": "centroid", "target": "random"}]
    params["ablation"]["variants"] = {"eat_aggregate_mean": {"defense": "eat", "options": {"aggregate": "mean"}}}
    params["readings"] = {"arch": "resnet", "seeds": [1], "variants": {"transfer_others": {"transfer": "others"}},
                          "matched": ["transfer_others"]}
    return params


def _run(args, cwd, env):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def git_copy(copy: Path) -> dict:
    """The tracked files in a new git repository at ``copy``, committed; returns the environment to run in.
    The committed results and lock of the full run are what the copy must produce, not start from."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file() and not name.startswith("results/") and name != "dvc.lock":
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _run(["git", "init", "-q"], copy, env)
    commit(copy, env, "copy")
    return env


def commit(copy: Path, env: dict, message: str) -> None:
    _run(["git", "add", "-A"], copy, env)
    _run(["git", "commit", "-qm", message, "--allow-empty"], copy, env)


def reproduce(copy: Path, params: dict, prepare=None):
    """A git copy of the tracked files at ``copy`` with ``params`` as its params.yaml; ``prepare(copy)`` (e.g. to
    place a dataset under data/) is called, then `dvc repro` runs there (every stage: `make repro` and `make
    verdict-grid` together), and everything is
    committed (so that `dvc exp run` can follow). Returns (env, dvc command)."""
    env = git_copy(copy)
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = [str(Path(sys.executable).parent / "dvc")]
    (copy / "data").mkdir(exist_ok=True)
    if prepare is not None:
        prepare(copy)
    _run([*dvc, "add", "-q", "data"], copy, env)  # what `make repro` does for an empty data/
    _run([*dvc, "repro"], copy, env)
    commit(copy, env, "repro")
    return env, dvc


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the tracked files, with the tiny profile, after one `dvc repro`."""
    copy = tmp_path_factory.mktemp("repo")
    params = tiny_profile(yaml.safe_load((ROOT / "params.yaml").read_text()))
    env, dvc = reproduce(copy, params)
    return copy, params, env, dvc


def _doc(copy: Path, arch: str, defense: str, seed: int = 0) -> dict:
    return json.loads((copy / f"results/metrics/{arch}/{defense}/seed{seed}.json").read_text())


def test_every_declared_output_exists_and_parses(repo):
    copy, params, _, _ = repo
    pipeline = params["pipeline"]
    archs, seeds = pipeline["archs"], pipeline["seeds"]
    trained = ["standard", "pgd_at", "pgd_at_matched", "eat"]
    for arch in archs:
        runs = [(d, s) for d in trained for s in seeds] + [(d, 0) for d in pipeline["inference_defenses"]]
        for defense, seed in runs:
            result = _doc(copy, arch, defense, seed)
            assert result["seed"] == seed and result["subset"]["seed"] == params["seed"]
            for section in ("clean", "worst", *(f"attacks.{a}" for a in result["attacks"])):
                scores = result
                for key in section.split("."):
                    scores = scores[key]
                assert {"nmi", "ami", "ari", "f1", "purity", "recall@1"} <= set(scores), (arch, defense, section)
            # Evaluation noise: k-means seeds and class-bootstrap replicates beside the clean and worst scores.
            assert set(result["noise"]) == {"clean", "worst"}
            # Randomised inference defenses, and only they, are attacked with EOT (every attack of the suite).
            randomized = defense in ("randomization", "bart", "mixup_inference")
            assert result["randomized"] is randomized, (arch, defense)
            # (Transfer attacks are crafted on a deterministic source model: no EOT.)
            eot = {name: attack["spec"]["eot"] for name, attack in result["attacks"].items()}
            expected = {name: params["attacks"]["eot_samples"] if randomized and not attack.get("source") else 1
                        for name, attack in result["attacks"].items()}
            assert eot == expected, eot
            if randomized or seed != params["seed"]:  # the sweep: main seed only, and randomised ones on request
                assert "sweep" not in result and not params["attacks"]["eot_sweep"]
            else:
                assert len(result["sweep"]["metrics"]) == len(params["attacks"]["sweep_eps"])
        for defense in trained:
            for seed in seeds:
                assert (copy / f"results/models/{arch}/{defense}/seed{seed}.pt").stat().st_size > 0
        assert (copy / f"results/figures/training_{arch}.png").stat().st_size > 0
    # The attacked images are the same for every seed; the trained models differ.
    first, second = _doc(copy, "resnet", "eat", 0), _doc(copy, "resnet", "eat", 1)
    assert sorted(first["members"]) == ["0", "1"] and first["subset"] == second["subset"]
    assert first["clean"] != second["clean"]
    # Aggregation alone is not retrained: the main EAT run's members, its cost, and no model of its own.
    mean = json.loads((copy / "results/ablation/eat_aggregate_mean.json").read_text())
    assert mean["reuses"].endswith("models/resnet/eat/seed0.pt") and mean["cost"] == first["cost"]
    assert not (copy / "results/ablation/models/eat_aggregate_mean.pt").exists()
    assert mean["clean"] != first["clean"]  # mean of the members' embeddings, not their concatenation
    for table in ("main", "ablation"):
        for ext in ("md", "tex", "csv"):
            assert (copy / f"results/tables/{table}.{ext}").stat().st_size > 0
    main = (copy / "results/tables/main.md").read_text()
    from eatlib.report import defense_label

    assert all(f"| {defense_label(d)} |" in main for d in trained + pipeline["inference_defenses"]), main
    sanity = (copy / "results/tables/sanity.md").read_text()
    assert all(f"{arch} / {d}" in sanity for arch in archs for d in ("standard", "eat")), sanity
    for figure in ("robustness_eps", "contact_sheet", "tsne_resnet_standard", "tsne_resnet_eat", "verdict"):
        assert (copy / f"results/figures/{figure}.png").stat().st_size > 1000
    verdict = json.loads((copy / "results/verdict.json").read_text())
    assert set(verdict) >= set(archs)
    assert (copy / "results/tables/verdict.md").read_text() == (copy / "results/verdict/verdict.md").read_text()
    timings = json.loads((copy / "results/timings.json").read_text())
    assert timings["total"] > 0 and "train/resnet/eat/seed1" in timings
    # A reading of EAT: trained with its own options and seed, attacked like the main runs, compared with them.
    reading = json.loads((copy / "results/readings/metrics/resnet/transfer_others/seed1.json").read_text())
    assert reading["config"]["defense_options"]["transfer"] == "others" and reading["seed"] == 1
    assert reading["reading"]["overrides"] == {"transfer": "others"} and reading["subset"] == first["subset"]
    readings = json.loads((copy / "results/verdict_readings.json").read_text())["resnet"]["transfer_others"]
    assert readings["vs_pgd_at"]["seeds"] == 1 and readings["vs_eat"]["b"] == "eat"
    # PGD-AT given that reading's compute: its own schedule, the reading's forward-backward images, a rival.
    matched = json.loads((copy / "results/readings/metrics/resnet/transfer_others/pgd_at_matched/seed1.json")
                         .read_text())
    assert matched["matched_to"]["reading"] == "transfer_others" and matched["seed"] == 1
    assert matched["cost"]["epochs"] == matched["matched_to"]["epochs"] != params["train"]["epochs"]
    assert readings["vs_pgd_at_own_compute"]["seeds"] == 1
    assert 0.5 < readings["_budget"]["pgd_at_own_compute"]["mean"] < 1.5
    assert (copy / "results/verdict_readings/verdict_readings.png").stat().st_size > 1000
    for notebook in (copy / "results/notebooks").rglob("*.ipynb"):
        assert json.loads(notebook.read_text())["cells"], notebook


def test_compute_matched_baseline_spent_the_budget_of_eat(repo):
    copy, params, *_ = repo
    for seed in params["pipeline"]["seeds"]:
        eat = _doc(copy, "resnet", "eat", seed)["cost"]
        matched = _doc(copy, "resnet", "pgd_at_matched", seed)["cost"]
        pgd_at = _doc(copy, "resnet", "pgd_at", seed)["cost"]
        per_epoch = pgd_at["forward_backward_images"] / pgd_at["epochs"]
        expected = max(1, round(eat["forward_backward_images"] / per_epoch))
        assert pgd_at["epochs"] == params["train"]["epochs"] and matched["epochs"] == expected != pgd_at["epochs"]
        assert abs(matched["forward_backward_images"] - eat["forward_backward_images"]) <= per_epoch / 2


def test_a_second_repro_does_nothing_and_status_is_clean(repo):
    copy, _, env, dvc = repo
    out = _run([*dvc, "repro"], copy, env)
    assert "Running stage" not in out
    assert "up to date" in _run([*dvc, "status"], copy, env)


def test_editing_one_eat_param_reruns_only_the_stages_that_read_it_and_the_rerun_succeeds(repo):
    copy, params, env, dvc = repo
    before = {arch: digest(copy / f"results/models/{arch}/eat/seed{seed}.pt")
              for arch, seed in (("resnet", 0), ("mobilenet", 1))}
    standard = digest(copy / "results/models/resnet/standard/seed0.pt")
    params["defenses"]["eat"]["transfer"] = "ensemble"
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(_run([*dvc, "status", "--json"], copy, env)))
    assert {"train@resnet-eat-0", "train@mobilenet-eat-1"} <= changed
    assert not {stage for stage in changed if "standard" in stage or "pgd_at" in stage.split("@")[1].split("-")}
    # Two targets, not all 19 stages that follow: an EAT model attacked, and PGD-AT at the new EAT's compute (DVC's
    # status lists the matched stages only once EAT's model has changed). The other EAT stages run the same
    # notebooks with other arguments. An interrupted-run checkpoint of the old configuration must not block it.
    out = _run([*dvc, "repro", "attack@resnet-eat-0", "attack-matched@mobilenet-1"], copy, env)
    assert "Running stage 'train-matched@mobilenet-1'" in out and "Running stage 'attack-matched@mobilenet-1'" in out
    for arch, seed in (("resnet", 0), ("mobilenet", 1)):
        assert digest(copy / f"results/models/{arch}/eat/seed{seed}.pt") != before[arch]  # retrained: another model
    config = _doc(copy, "resnet", "eat")["config"]
    assert config["defense_options"]["transfer"] == "ensemble"
    assert digest(copy / "results/models/resnet/standard/seed0.pt") == standard
    # What is left stale reads defenses.eat or follows an EAT model, and nothing else does.
    left = set(json.loads(_run([*dvc, "status", "--json"], copy, env)))
    assert not left & {"train@resnet-eat-0", "attack@resnet-eat-0", "train-matched@mobilenet-1"}, left
    follows_eat = ("reading", "reading-matched", "readings", "ablation", "verdict", "report", "train-matched",
                   "attack-matched")
    assert {"attack@mobilenet-eat-1", "report"} <= left
    assert all(stage.split("@")[0] in follows_eat or "-eat-" in stage for stage in left), left
    commit(copy, env, "transfer: ensemble")


def test_dvc_exp_run_with_a_changed_ensemble_size_after_a_run(repo):
    copy, _, env, dvc = repo
    # One target (and what it needs), not the whole pipeline again: the test is about `dvc exp run -S` itself.
    out = _run([*dvc, "exp", "run", "-S", "defenses.eat.members=3", "attack@resnet-eat-1"], copy, env)
    assert "Running stage 'train@resnet-eat-1'" in out and "Running stage 'train@mobilenet-eat-1'" not in out
    model = _doc(copy, "resnet", "eat", 1)
    assert sorted(model["members"]) == ["0", "1", "2"]
    assert yaml.safe_load((copy / "params.yaml").read_text())["defenses"]["eat"]["members"] == 3


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and every descendant (papermill's kernel runs in a session of its own).

    DVC goes first: killed after its command, it lives long enough to see the command fail and starts rewriting
    ``.dvc/tmp/rwlock``, and a kill mid-write leaves that file empty (CI saw it: every later ``dvc repro`` failed).
    """
    import psutil

    parent = psutil.Process(process.pid)
    for child in [parent, *parent.children(recursive=True)]:
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=60)


def test_a_train_stage_killed_mid_epoch_by_dvc_resumes_to_the_same_weights(repo):
    copy, _, env, dvc = repo
    model, run_dir = copy / "results/models/resnet/pgd_at/seed1.pt", copy / "runs/resnet/pgd_at/seed1"
    uninterrupted = copy.parent / "pgd_at.uninterrupted.pt"
    shutil.copy2(model, uninterrupted)
    # Forced: otherwise DVC's run cache restores the stage's outputs instead of running it.
    command = [*dvc, "repro", "--force", "--single-item", "train@resnet-pgd_at-1"]
    process = subprocess.Popen(command, cwd=copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not list(run_dir.glob("checkpoint-*.pt")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, "the stage ended before its first checkpoint"
        _kill_tree(process)  # in epoch 2 of 2: epoch 1's checkpoint was just written
    finally:
        if process.poll() is None:
            _kill_tree(process)
    assert not model.exists()  # DVC removed the old output before running
    out = _run(command, copy, env)  # the same command again
    assert "Running stage 'train@resnet-pgd_at-1'" in out
    notebook = (copy / "results/notebooks/train/resnet-pgd_at-seed1.ipynb").read_text()
    assert "resuming the interrupted run" in notebook and "after epoch 1" in notebook
    trained = {name: torch.load(path, weights_only=True)["state_dict"] for name, path in
               (("resumed", model), ("uninterrupted", uninterrupted))}
    for key, tensor in trained["uninterrupted"].items():
        assert torch.equal(trained["resumed"][key], tensor), key  # bitwise, on the CPU
    assert not list(run_dir.glob("checkpoint-*.pt"))  # finished: nothing left to resume
