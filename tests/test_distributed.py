"""torchrun with 2 CPU processes (gloo): the same losses and weights as one process with the same global batch.

One torchrun launch runs every multi-process check (starting processes is what costs time here); each rank writes
what it saw to a JSON file, and the tests below read them.

Tolerance: per-epoch losses within rtol 1e-5 and final weights and proxies within rtol 1e-4 / atol 1e-5 of
the single-process run. Measured here (3 and 10 epochs): losses within 2e-7 (relative), network weights within
6e-7 and proxies within 6e-6 (absolute); the difference is float summation order (gradients summed per rank,
then across ranks). BatchNorm is frozen in this comparison: with per-rank batch statistics the runs differ by
tens of percent; torch's SyncBatchNorm (``--sync-bn``), which makes them the global batch's, runs on CUDA only.

The last tests place an ensemble's members on devices of their own (one process; CPU here).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_faults import one_thread, tiny_params, train_argv  # noqa: F401 (one_thread: autouse fixture)
from test_train import TinyImages

from eatlib import checkpoint
from eatlib.cli import main
from eatlib.defenses import build_training
from eatlib.models import build_model
from eatlib.params import TrainConfig
from eatlib.persistence import FINAL, RunFiles, interrupted_runs
from eatlib.train import fit

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
LOSS_RTOL = 1e-5
WEIGHT_RTOL, WEIGHT_ATOL = 1e-4, 1e-5

WORKER = r'''
import json, sys
from pathlib import Path

import torch

sys.path.insert(0, sys.argv[3])
from eatlib import distributed
from eatlib.cli import main
from eatlib.params import TrainConfig
from eatlib.defenses import build_training
from eatlib.models import build_model
from eatlib.persistence import RunFiles
from eatlib.train import fit
from test_train import CFG, TinyImages, _fresh

RunFiles.finish = lambda self: None  # keep the checkpoints: the tests compare the proxies they hold

out, params = Path(sys.argv[1]), sys.argv[2]
current = distributed.init_from_env("cpu")
rank = current.rank
report = {"world": [current.rank, current.world_size]}

# Gather with gradients, ranks holding different numbers of rows (rank r: r + 2 rows of value r + 1).
x = torch.full((rank + 2, 2), float(rank + 1), requires_grad=True)
gathered = distributed.all_gather(x)
(gathered[:, 0] * torch.arange(len(gathered))).sum().backward()
report["gather"] = {"values": gathered[:, 0].tolist(), "grad": x.grad[:, 0].tolist()}

# A non-finite loss on rank 1 only, at epoch 2, step 3 (CFG: 4 steps per epoch).
calls = {"n": 0}
def explodes_on_rank_1(model, criterion, batch):
    calls["n"] += 1
    loss = criterion(model(batch.images), batch.labels)
    return loss * float("inf") if rank == 1 and calls["n"] == 7 else loss
model, criterion = _fresh()
try:
    fit(model, criterion, TinyImages(), None, CFG, out_dir=out / "nan", step=explodes_on_rank_1, progress=False)
except FloatingPointError as error:
    report["nan"] = str(error)

# An ensemble (EAT: per-member losses on each rank's share, an inner attack) trains through DDP.
from test_distributed import _tiny_eat, eat_cfg
setup = _tiny_eat()
history = fit(setup.model, setup.criterion, TinyImages(), None, eat_cfg(), out_dir=out / "eat", step=setup.step,
              progress=False)
report["eat"] = {"loss": history[-1]["loss"], "images": history[-1]["forward_backward_images"],
                 "weights": {k: v.tolist() for k, v in setup.model.state_dict().items() if v.is_floating_point()}}

(out / f"rank{rank}.json").write_text(json.dumps(report))
# Last: the command line, exactly as users run it (it shuts the process group down).
sys.exit(main(["--params", params, "train", "--arch", "small", "--out", str(out / "cli")]))
'''


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """One ``torchrun --nproc-per-node=2`` of the worker above; returns (folder, params file, output)."""
    folder = tmp_path_factory.mktemp("distributed")
    # Augmented, as the default profile trains: each rank must transform its share as one process would.
    params = tiny_params(folder, freeze_bn=True, augment={"shift": 0.1, "rotation_deg": 10, "scale": [0.9, 1.1]})
    (folder / "worker.py").write_text(WORKER)
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc-per-node=2", "--tee=3", str(folder / "worker.py"),
               str(folder), str(params), str(TESTS)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return folder, params, done.stdout + done.stderr


def _report(folder: Path, rank: int) -> dict:
    return json.loads((folder / f"rank{rank}.json").read_text())


def test_two_processes_train_like_one_with_the_same_global_batch(launch, tmp_path, monkeypatch):
    folder, params, _ = launch
    monkeypatch.setattr(RunFiles, "finish", lambda self: None)  # keep the checkpoint: it holds the proxies
    assert main(train_argv(params, tmp_path / "single")) == 0
    single, double = checkpoint.load(tmp_path / "single" / FINAL), checkpoint.load(folder / "cli" / FINAL)
    single_losses = [h["loss"] for h in single["history"]]
    assert len(single_losses) == 3 and single_losses[-1] < single_losses[0]
    assert [h["loss"] for h in double["history"]] == pytest.approx(single_losses, rel=LOSS_RTOL)
    assert [h["forward_backward_images"] for h in double["history"]] == \
        [h["forward_backward_images"] for h in single["history"]]  # summed over the ranks
    assert [h["epoch"] for h in double["history"]] == [1, 2, 3] and "val_nmi" in double["history"][-1]
    for name, tensor in single["state_dict"].items():
        torch.testing.assert_close(double["state_dict"][name], tensor, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL, msg=name)
    proxies = [checkpoint.load(interrupted_runs(path)[0])["criterion"]["proxies"]
               for path in (tmp_path / "single", folder / "cli")]
    torch.testing.assert_close(proxies[1], proxies[0], rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL)


def test_only_rank_0_logs_and_prints(launch):
    _, _, output = launch
    lines = output.splitlines()
    records = [line for line in lines if "epoch=1 " in line]
    assert len(records) == 1 and records[0].startswith("[default0]"), records
    summaries = [line for line in lines if '"forward_backward_images"' in line]
    assert len(summaries) == 1 and summaries[0].startswith("[default0]"), summaries
    assert not [line for line in lines if line.startswith("[default1]") and "epoch " in line]  # no progress bar


def test_all_gather_keeps_uneven_shares_in_rank_order_and_sums_gradients(launch):
    folder, _, _ = launch
    for rank in (0, 1):
        report = _report(folder, rank)
        assert report["world"] == [rank, 2]
        assert report["gather"]["values"] == [1.0, 1.0, 2.0, 2.0, 2.0]
        # d/dx of sum_i i * gathered_i, summed over both ranks' identical losses: 2 * position
        assert report["gather"]["grad"] == ([0.0, 2.0] if rank == 0 else [4.0, 6.0, 8.0])


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step(launch):
    folder, _, _ = launch
    for rank in (0, 1):
        message = _report(folder, rank)["nan"]
        assert f"on rank {rank} at epoch 2, step 3" in message
        assert f"last good checkpoint: {interrupted_runs(folder / 'nan')[0]} (after epoch 1)" in message
    assert "loss is inf on rank 1" in _report(folder, 1)["nan"]


# The ensemble comparison: frozen BatchNorm (per-rank batch statistics would differ by design), 2 epochs.
def eat_cfg() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=12, lr=1e-3, freeze_bn=True)


def _tiny_eat(seed=0):
    torch.manual_seed(seed)
    return build_training("eat", {"members": 2, "attack": {"steps": 1, "warmup_epochs": 0}},
                          make_member=lambda: build_model("cnn4", embedding_dim=8, image_size=16, width=4),
                          num_classes=6, num_samples=48)


def test_an_ensemble_trains_through_ddp_like_one_process(launch, tmp_path):
    """Not bitwise: EAT's per-member losses are each rank's share's (Proxy-Anchor does not split over samples),
    and each rank draws its own attack sources and starts. The same amount of work, the same direction."""
    folder, _, _ = launch
    setup = _tiny_eat()
    start = {k: v.clone() for k, v in setup.model.state_dict().items() if v.is_floating_point()}
    history = fit(setup.model, setup.criterion, TinyImages(), None, eat_cfg(), out_dir=tmp_path, step=setup.step,
                  progress=False)
    reports = [_report(folder, rank)["eat"] for rank in (0, 1)]
    assert reports[0]["images"] == history[-1]["forward_backward_images"]  # summed over both ranks
    assert reports[0]["loss"] == pytest.approx(history[-1]["loss"], rel=0.15)
    moved = {run: torch.cat([(torch.tensor(weights[k]) - start[k]).flatten() for k in start])
             for run, weights in (("ddp", reports[0]["weights"]),
                                  ("one", {k: v.tolist() for k, v in setup.model.state_dict().items()}))}
    assert torch.nn.functional.cosine_similarity(moved["ddp"], moved["one"], dim=0) > 0.8  # measured: 0.89
    assert checkpoint.load(folder / "eat" / FINAL)["model_config"]["members"]


def test_members_on_their_own_devices_train_as_on_one(tmp_path):
    from test_train import TinyImages

    cfg = TrainConfig(epochs=1, batch_size=12, lr=1e-3)
    histories, models = [], []
    for run, devices in (("one", None), ("placed", ["cpu", "cpu"])):
        setup = _tiny_eat()
        histories.append(fit(setup.model, setup.criterion, TinyImages(), None, cfg, out_dir=tmp_path / run,
                             step=setup.step, progress=False, member_devices=devices))
        models.append(setup.model)
    assert histories[1][0]["loss"] == pytest.approx(histories[0][0]["loss"], rel=1e-6)
    for name, tensor in models[0].state_dict().items():
        torch.testing.assert_close(models[1].state_dict()[name], tensor, msg=name)
    member = models[1].members[1]
    assert member._forward_pre_hooks and member._forward_hooks  # the routing is in place
    assert checkpoint.load(tmp_path / "placed" / FINAL)["state_dict"].keys() == models[0].state_dict().keys()


def test_member_devices_must_name_one_device_per_member(tmp_path, capsys):
    from test_train import TinyImages

    setup = _tiny_eat()
    with pytest.raises(ValueError, match=r"member_devices: got 3 devices .*allowed: one per member \(2\)"):
        fit(setup.model, setup.criterion, TinyImages(), None, TrainConfig(epochs=1, batch_size=12),
            out_dir=tmp_path, step=setup.step, progress=False, member_devices=["cpu"] * 3)
    params = tiny_params(tmp_path)
    argv = [*train_argv(params, tmp_path / "out"), "--defense", "eat", "--member-devices", "cpu"]
    assert main(argv) == 2
    assert "--member-devices: got cpu for eat; allowed: one device per member (3)" in capsys.readouterr().err


def test_sync_bn_on_cpu_processes_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc-per-node=2 sets it
    assert main([*train_argv(tiny_params(tmp_path), tmp_path / "out"), "--sync-bn"]) == 2
    assert "--sync-bn: allowed only on GPUs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
