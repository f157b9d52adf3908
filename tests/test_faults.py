"""Faults: a killed run resumes to the same weights, a corrupted checkpoint keeps the previous good one, a
non-finite loss names its step and the last checkpoint, and bad input fails before any work (exit status 2)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from eatlib import checkpoint
from eatlib.cli import main
from eatlib.persistence import FINAL, RunFiles, interrupted_runs
from eatlib.train import Batch, fit

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 10


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as in the subprocesses below: as fast for these tiny networks, and immune to the
    slowdown several spinning threads suffer on a machine busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_params(folder: Path, *, images_per_class: int = 8, **train) -> Path:
    """A params file that trains cnn4 (width 4, 16px) on 12 generated glyph classes in well under a second per
    epoch; ``train`` overrides the train section."""
    params = {
        "seed": 0,
        "device": "cpu",
        "data": {"name": "glyphs", "prepared": str(folder / "prepared"), "image_size": 16,
                 "options": {"num_classes": 12, "images_per_class": images_per_class}},
        "models": {"small": {"arch": "cnn4", "embedding_dim": 16, "options": {"width": 4}}},
        "pipeline": {"archs": ["small"], "compared": ["standard", "pgd_at", "eat"]},
        "train": {"epochs": 3, "batch_size": 8, "samples_per_class": 4, "lr": 0.003, "warmup_epochs": 0,
                  "lr_milestones": [2], **train},
        "attacks": {"headline": {"name": "fgsm", "optimizer": "fgsm", "eps": "8/255", "objective": "embedding_shift"}},
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def train_argv(params: Path, out: Path, *extra: str) -> list[str]:
    return ["--params", str(params), "train", "--arch", "small", "--out", str(out), "--quiet", *extra]


def assert_same_weights(path_a: Path, path_b: Path) -> None:
    a, b = checkpoint.load(path_a), checkpoint.load(path_b)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, msg=name)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    params = tiny_params(tmp_path, images_per_class=40, epochs=EPOCHS)  # 25 steps per epoch
    assert main(train_argv(params, tmp_path / "full")) == 0

    cut = tmp_path / "cut"
    log = open(tmp_path / "killed.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen([sys.executable, "-m", "eatlib.cli", *train_argv(params, cut)], cwd=ROOT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not interrupted_runs(cut) and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)  # inside epoch 2: its first checkpoint was just written
        process.wait(timeout=60)
    finally:
        process.kill()
        log.close()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    (latest,) = interrupted_runs(cut)
    done = checkpoint.load(latest)["epoch"]
    assert 1 <= done < EPOCHS and not (cut / FINAL).exists()

    assert main(train_argv(params, cut)) == 0  # the same command again
    history = checkpoint.load(cut / FINAL)["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))  # no completed epoch lost, none repeated
    assert_same_weights(tmp_path / "full" / FINAL, cut / FINAL)
    full_history = checkpoint.load(tmp_path / "full" / FINAL)["history"]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in full_history], rel=1e-6)
    assert not list(cut.glob(".*.tmp")) and interrupted_runs(cut) == []  # finished: nothing left to resume


def test_a_corrupted_checkpoint_is_a_clear_error_and_the_previous_one_is_kept(tmp_path, capsys, monkeypatch):
    params = tiny_params(tmp_path)
    run = tmp_path / "run"
    with monkeypatch.context() as patch:  # a run killed after its last checkpoint, before it cleaned up
        patch.setattr(RunFiles, "finish", lambda self: None)
        assert main(train_argv(params, run)) == 0
    final = (run / FINAL).read_bytes()
    (latest_name,) = (path.name for path in interrupted_runs(run))
    prev_name = latest_name.replace(".pt", ".prev.pt")
    assert checkpoint.load(run / prev_name)["epoch"] == 2 and checkpoint.load(run / latest_name)["epoch"] == 3
    previous = (run / prev_name).read_bytes()
    capsys.readouterr()

    latest = (run / latest_name).read_bytes()
    for broken in (latest[: len(latest) // 2], b"\x00garbage" * 100):  # truncated, then overwritten
        (run / latest_name).write_bytes(broken)
        assert main(train_argv(params, run)) == 1
        error = capsys.readouterr().err
        assert f"cannot load checkpoint {run / latest_name}" in error and "truncated, corrupted" in error
        assert f"previous good checkpoint is kept: {run / prev_name} (after epoch 2)" in error
        assert f"mv {run / prev_name} {run / latest_name}" in error
        assert (run / prev_name).read_bytes() == previous  # untouched by the failed run

    os.replace(run / prev_name, run / latest_name)  # what the message says to do
    assert main(train_argv(params, run)) == 0  # resumes after epoch 2, trains epoch 3 again
    (run / "again.pt").write_bytes(final)
    assert_same_weights(run / "again.pt", run / FINAL)


def test_a_non_finite_loss_names_the_step_and_the_last_good_checkpoint(tmp_path):
    from test_train import CFG, TinyImages, _fresh  # the trainer tests' tiny data and model

    calls = {"n": 0}

    def explodes_in_epoch_2(model, criterion, batch: Batch):
        calls["n"] += 1
        loss = criterion(model(batch.images), batch.labels)
        return loss * float("inf") if calls["n"] == 7 else loss  # 4 steps per epoch: epoch 2, step 3

    model, criterion = _fresh()
    with pytest.raises(FloatingPointError) as error:
        fit(model, criterion, TinyImages(), None, CFG, out_dir=tmp_path, step=explodes_in_epoch_2, progress=False)
    message = str(error.value)
    (latest,) = interrupted_runs(tmp_path)
    assert "epoch 2, step 3" in message and f"last good checkpoint: {latest} (after epoch 1)" in message
    assert checkpoint.load(latest)["epoch"] == 1  # and it is still there, readable


BAD_INPUT = {  # id: (params.yaml change, --arch, extra options, what stderr must say)
    "unknown-arch": ({}, "nope", [], ["--arch: got 'nope'", "allowed", "['small']"]),
    "unknown-defense": ({}, "small", ["--defense", "magic"], ["--defense: got 'magic'", "allowed", "'eat'"]),
    "glyph-options-on-cub": ({"data": {"name": "cub200"}}, "small", [],
                             ["data.options: got", "options of the glyphs generator", "data.options to {}"]),
    "missing-dataset-folder": ({"data": {"name": "cub200", "root": "{tmp}/nodata", "options": {}}}, "small", [],
                               ["data.root", "nodata", "data.name 'cub200'", "allowed"]),
    "bad-epochs": ({"train": {"epochs": 0}}, "small", [], ["train.epochs: got 0; allowed: an integer >= 1"]),
    "one-member-ensemble": ({"defenses": {"eat": {"members": 1}}}, "small", [],
                            ["defenses.eat.members: got 1; allowed: an integer >= 2"]),
    "missing-params-file": ({}, "small", ["--params", "{tmp}/missing.yaml"],
                            ["--params: got", "missing.yaml", "allowed"]),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_fails_before_any_work_with_key_value_and_allowed(tmp_path, capsys, case):
    change, arch, extra, expected = BAD_INPUT[case]
    params = tiny_params(tmp_path)
    data = yaml.safe_load(params.read_text())
    for section, values in change.items():
        data.setdefault(section, {}).update(
            {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in values.items()})
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    global_options = extra[:2] if extra[:1] == ["--params"] else ["--params", str(params)]
    train_options = extra if extra[:1] != ["--params"] else []
    argv = [*global_options, "train", "--arch", arch, "--out", str(tmp_path / "out"), "--quiet", *train_options]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("eat: error: ")
    for text in expected:
        assert text in error
    assert not (tmp_path / "out").exists()  # nothing was started


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun --nproc-per-node=3 sets it
    assert main(train_argv(tiny_params(tmp_path), tmp_path / "out")) == 2
    assert "train.batch_size: got 8; allowed: a multiple of the 3 processes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
