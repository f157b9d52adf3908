"""Resume after SIGKILL for adversarial training (``pgd_at``) and EAT: a run killed mid-epoch at a random
optimisation step, run again with the same command, ends with the bitwise weights of an uninterrupted run.

Only the public entry (``eat train``) and its final model file are used: the child below is the CLI with a hook
that prints each optimiser step and waits for the parent's go-ahead, so the kill lands exactly at the step drawn.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from eatlib import checkpoint
from eatlib.persistence import FINAL

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
TIMEOUT = 300

# The CLI, paced: after every optimiser step it prints "step <n>" and waits for a line on stdin.
CHILD = """
import sys
from torch.optim.optimizer import register_optimizer_step_post_hook

steps = 0


def paced(optimizer, args, kwargs):
    global steps
    steps += 1
    print(f"step {steps}", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("parent went away")


register_optimizer_step_post_hook(paced)
from eatlib.cli import main

sys.exit(main(sys.argv[1:]))
"""

ATTACK = {"eps": "8/255", "step_size": "4/255", "steps": 2, "warmup_epochs": 1}  # warm-up: epoch-dependent eps


def tiny_params(folder: Path) -> Path:
    params = {
        "seed": 0,
        "device": "cpu",
        "data": {"name": "glyphs", "prepared": str(folder / "prepared"), "image_size": 16,
                 "options": {"num_classes": 12, "images_per_class": 8}},
        "models": {"small": {"arch": "cnn4", "embedding_dim": 16, "options": {"width": 4}}},
        "pipeline": {"archs": ["small"], "compared": ["standard", "pgd_at", "eat"]},
        "train": {"epochs": EPOCHS, "batch_size": 8, "samples_per_class": 4, "lr": 0.003, "warmup_epochs": 0.5,
                  "lr_milestones": [2]},
        "defenses": {"standard": {}, "pgd_at": {"attack": ATTACK},
                     "eat": {"members": 2, "transfer": "each_member", "attack": ATTACK}},
        "attacks": {"headline": {"name": "fgsm", "optimizer": "fgsm", "eps": "8/255", "objective": "embedding_shift"}},
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def command(params: Path, defense: str, out: Path) -> list[str]:
    return [sys.executable, "-c", CHILD, "--params", str(params), "train", "--arch", "small", "--defense", defense,
            "--init", "none", "--out", str(out), "--quiet"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_to_the_end(args: list[str], log: Path) -> int:
    """Run the paced child, saying go to every step; returns how many optimiser steps it took."""
    done = subprocess.run(args, cwd=ROOT, env=ENV, input="go\n" * 10_000, capture_output=True, text=True,
                          timeout=TIMEOUT)
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"{args} failed:\n{done.stderr[-3000:]}"
    return sum(line.startswith("step ") for line in done.stdout.splitlines())


def run_and_kill_at(args: list[str], kill_at: int, log: Path) -> None:
    """Run the paced child and SIGKILL it right after its optimiser step ``kill_at`` (before the next step)."""
    with open(log, "w") as errors:
        process = subprocess.Popen(args, cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors, text=True, bufsize=1)
        try:
            for line in process.stdout:
                if not line.startswith("step "):
                    continue
                if int(line.split()[1]) == kill_at:
                    process.send_signal(signal.SIGKILL)
                    break
                process.stdin.write("go\n")
                process.stdin.flush()
            process.wait(timeout=TIMEOUT)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["state_dict"]


@pytest.mark.parametrize("defense, seed", [("pgd_at", 1), ("eat", 2)])
def test_a_run_killed_at_a_random_step_resumes_to_bitwise_the_same_weights(tmp_path, defense, seed):
    params = tiny_params(tmp_path)
    full = tmp_path / "full"
    total = run_to_the_end(command(params, defense, full), tmp_path / "full.log")
    per_epoch = total // EPOCHS  # the glyphs' training split, in batches of 8
    assert total == EPOCHS * per_epoch and per_epoch >= 3
    # A random step strictly inside epoch 2 or 3 (never at an epoch's end: the epoch must be redone on resume).
    kill_at = random.Random(seed).choice([s for s in range(per_epoch + 1, total) if s % per_epoch])

    cut = tmp_path / "cut"
    run_and_kill_at(command(params, defense, cut), kill_at, tmp_path / "killed.log")
    assert not (cut / FINAL).exists()
    resumed_steps = run_to_the_end(command(params, defense, cut), tmp_path / "resumed.log")  # the same command
    # It resumed after the last completed epoch: only the rest of the run was trained again.
    completed = kill_at // per_epoch
    assert resumed_steps == total - completed * per_epoch, (kill_at, resumed_steps)

    a, b = weights(full / FINAL), weights(cut / FINAL)
    assert a.keys() == b.keys()
    differing = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differing, f"killed at step {kill_at}: weights differ bitwise in {differing}"
    history_a, history_b = checkpoint.load(full / FINAL)["history"], checkpoint.load(cut / FINAL)["history"]
    assert [h["loss"] for h in history_b] == [h["loss"] for h in history_a]
    assert [h["eps"] for h in history_b] == [h["eps"] for h in history_a] == pytest.approx(
        [4 / 255, 8 / 255, 8 / 255])  # the warm-up replays on resume
