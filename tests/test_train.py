"""The shared trainer: it learns, it resumes exactly, it refuses bad checkpoints and non-finite losses."""

import pickle

import numpy as np
import pytest
import torch

from eatlib import checkpoint
from eatlib.losses import build_loss
from eatlib.models import build_model
from eatlib.params import AugmentConfig, TrainConfig
from eatlib.persistence import FINAL, interrupted_runs, load_model
from eatlib.train import Batch, fit


class TinyImages(torch.utils.data.Dataset):
    """Classes of flat-coloured 16px images with noise: learnable in a few steps."""

    def __init__(self, num_classes=6, per_class=8, seed=0):
        rng = np.random.default_rng(seed)
        colours = rng.uniform(0, 1, size=(num_classes, 3, 1, 1))
        labels = np.repeat(np.arange(num_classes), per_class)
        images = colours[labels] + rng.normal(0, 0.15, size=(len(labels), 3, 16, 16))
        self.images = torch.as_tensor(np.clip(images, 0, 1) * 255, dtype=torch.uint8)
        self.labels, self.num_classes = labels.astype(np.int64), num_classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255, int(self.labels[i])


CFG = TrainConfig(epochs=3, batch_size=12, samples_per_class=4, lr=3e-3, warmup_epochs=0.5, lr_milestones=[2])
AUGMENTED = TrainConfig(**{**CFG.__dict__, "augment": AugmentConfig(shift=0.1, rotation_deg=10, scale=(0.9, 1.1))})


def _fresh(seed=0):
    torch.manual_seed(seed)
    model = build_model("cnn4", embedding_dim=16, image_size=16)
    return model, build_loss("proxy_anchor", 6, 16, margin=0.1, alpha=32)


def _train(out_dir, cfg=CFG, **kwargs):
    model, criterion = _fresh()
    history = fit(model, criterion, TinyImages(), TinyImages(seed=1), cfg, out_dir=out_dir, progress=False, **kwargs)
    return model, history


def test_training_lowers_the_loss_and_writes_both_files(tmp_path):
    model, history = _train(tmp_path)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[0]["forward_backward_images"] == len(TinyImages())  # one clean pass per image and epoch
    assert {"val_nmi", "val_recall@1"} <= set(history[-1])
    assert interrupted_runs(tmp_path) == []  # a finished run leaves its model, no checkpoint
    reloaded = load_model(tmp_path / FINAL)
    x = torch.rand(4, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(reloaded(x), model(x))


def _interrupt(out_dir, cfg=CFG, at_call=6):
    """Train until the step's ``at_call``-th call (6: mid-way through epoch 2, of 4 batches), then stop."""
    calls = {"n": 0}

    def interrupted(model, criterion, batch: Batch):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return criterion(model(batch.images), batch.labels)

    with pytest.raises(KeyboardInterrupt):
        _train(out_dir, cfg, step=interrupted)


def _assert_same_weights(a, b):
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], tensor, msg=name, rtol=0, atol=0)


@pytest.mark.parametrize("cfg", [CFG, AUGMENTED], ids=["plain", "augmented"])
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, cfg):
    full, _ = _train(tmp_path / "full", cfg)
    _interrupt(tmp_path / "cut", cfg)
    (latest,) = interrupted_runs(tmp_path / "cut")
    assert checkpoint.load(latest)["epoch"] == 1
    model, criterion = _fresh(seed=123)  # another init: everything must come from the checkpoint
    history = fit(model, criterion, TinyImages(), TinyImages(seed=1), cfg, out_dir=tmp_path / "cut", progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    _assert_same_weights(full, model)
    assert interrupted_runs(tmp_path / "cut") == []


def test_another_configuration_trains_from_scratch_beside_an_interrupted_run(tmp_path, capsys):
    other = TrainConfig(**{**CFG.__dict__, "lr": 1e-2})
    reference, _ = _train(tmp_path / "reference", other)
    _interrupt(tmp_path / "run")
    (interrupted,) = interrupted_runs(tmp_path / "run")
    capsys.readouterr()
    model, history = _train(tmp_path / "run", other)  # must not resume the lr=3e-3 run
    assert [h["epoch"] for h in history] == [1, 2, 3]
    _assert_same_weights(reference, model)
    assert f"{interrupted} is a checkpoint of another configuration" in capsys.readouterr().err
    assert interrupted_runs(tmp_path / "run") == [interrupted]  # left as is: the same command resumes it
    resumed, _ = _train(tmp_path / "run")
    full, _ = _train(tmp_path / "full")
    _assert_same_weights(full, resumed)


def test_a_finished_run_is_trained_again_and_the_replacement_is_announced(tmp_path, capsys):
    _train(tmp_path)
    capsys.readouterr()
    _, history = _train(tmp_path)
    assert [h["epoch"] for h in history] == [1, 2, 3]  # from scratch: nothing silently satisfied it
    assert "is a finished run of this same configuration" in capsys.readouterr().err
    other = TrainConfig(**{**CFG.__dict__, "lr": 1e-2})
    _train(tmp_path, other)
    assert "finished model of another configuration (differs in: train)" in capsys.readouterr().err


def test_non_finite_loss_stops_with_the_step_and_last_checkpoint(tmp_path):
    def exploding(model, criterion, batch: Batch):
        return criterion(model(batch.images), batch.labels) * float("nan")

    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1; last good checkpoint: none yet"):
        _train(tmp_path, step=exploding)


def test_corrupted_checkpoint_gives_a_clear_error(tmp_path):
    _interrupt(tmp_path, at_call=10)  # in epoch 3: two checkpoints, the latest and the previous one
    (latest,) = interrupted_runs(tmp_path)
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated, corrupted"):
        _train(tmp_path)


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _Payload()}, handle)
    with pytest.raises(checkpoint.CheckpointError, match="pickled code"):
        checkpoint.load(path)
