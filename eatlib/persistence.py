"""A training run's files: keyed per-epoch checkpoints with rotation, and the deployable model.

A run folder (``runs/<arch>/<defense>``, outside DVC's outputs) may outlive the run that wrote it, so nothing in it
may block or silently satisfy a later run:

- checkpoints are named by a hash of the run's whole configuration and starting network
  (``checkpoint-<key>.pt``, see :func:`run_key`): a run resumes only an interrupted run of exactly the same
  configuration, and a run of any other configuration does not see it and trains from scratch;
- once the final model is written, the run's checkpoints are deleted (:meth:`RunFiles.finish`): a finished run
  leaves only its model.

Writes are atomic (:mod:`eatlib.atomic`): ``checkpoint-<key>.pt`` is always a complete file, and the one it replaces
is kept as ``checkpoint-<key>.prev.pt``, so a latest checkpoint found corrupted still leaves the epoch before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from eatlib import checkpoint
from eatlib.devices import resolve_device
from eatlib.models import model_from_config

FINAL = "model.pt"


def run_key(meta: dict) -> str:
    """12 hex digits naming a run's configuration: ``meta`` holds the training schedule, seed, model, data, the
    defense's options and the starting network's content hash (plain JSON data)."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:12]


class RunFiles:
    """The checkpoint files of one configuration (``meta``) inside ``out_dir``."""

    def __init__(self, out_dir: str | Path, meta: dict):
        self.out_dir = Path(out_dir)
        self.key = run_key(meta)
        self.latest = self.out_dir / f"checkpoint-{self.key}.pt"
        self.previous = self.out_dir / f"checkpoint-{self.key}.prev.pt"

    def others(self) -> list[Path]:
        """Checkpoints in ``out_dir`` of interrupted runs of other configurations (this run ignores them)."""
        mine = {self.latest.name, self.previous.name}
        return sorted(p for p in self.out_dir.glob("checkpoint*.pt") if p.name not in mine)

    def remove_partial_writes(self) -> None:
        """Delete the temporary files of writes that a killed run left half done (they are never read)."""
        for partial in self.out_dir.glob(f".checkpoint-{self.key}.*.tmp"):  # not another run's writes
            partial.unlink(missing_ok=True)
        for partial in self.out_dir.glob(f".{FINAL}.*.tmp"):
            partial.unlink(missing_ok=True)

    def load(self) -> dict | None:
        """The latest training state of this configuration, or None. A corrupted file is an error that names the
        previous good checkpoint."""
        if not self.latest.exists():
            return None
        try:
            return checkpoint.load(self.latest)
        except checkpoint.CheckpointError as error:
            try:
                epoch = checkpoint.load(self.previous)["epoch"]
                hint = (f"The previous good checkpoint is kept: {self.previous} (after epoch {epoch}); to resume "
                        f"from it: mv {self.previous} {self.latest}")
            except (FileNotFoundError, checkpoint.CheckpointError):
                hint = (f"There is no readable previous checkpoint ({self.previous}); delete {self.latest} "
                        "to train anew.")
            raise checkpoint.CheckpointError(f"{error}\n{hint}") from error

    def save(self, state: dict) -> None:
        """Write ``state`` atomically; the checkpoint it replaces becomes the previous one. At every moment the
        latest checkpoint is a complete file (the old one, then the new one)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.latest.exists():
            keep = self.out_dir / f".{self.previous.name}.{os.getpid()}.tmp"
            keep.unlink(missing_ok=True)
            try:
                os.link(self.latest, keep)  # a second name for the old file: no copy
            except OSError:  # file systems without hard links
                shutil.copyfile(self.latest, keep)
            os.replace(keep, self.previous)
        checkpoint.save_atomic(state, self.latest)

    def finish(self) -> None:
        """The final model is written: this run's checkpoints have done their job."""
        self.latest.unlink(missing_ok=True)
        self.previous.unlink(missing_ok=True)


def interrupted_runs(out_dir: str | Path) -> list[Path]:
    """The latest checkpoints of the interrupted runs in ``out_dir`` (one per configuration; finished runs leave
    none)."""
    return sorted(p for p in Path(out_dir).glob("checkpoint-*.pt") if not p.name.endswith(".prev.pt"))


def describe_existing_model(path: str | Path, meta: dict) -> str | None:
    """What a run writing its final model to ``path`` will replace, in words (None when ``path`` is free)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        old = checkpoint.load(path).get("meta", {})
    except checkpoint.CheckpointError:
        return f"{path} exists but cannot be read; this run replaces it when it finishes"
    if old == meta:
        return (f"{path} is a finished run of this same configuration; training again from scratch and replacing "
                "it (the same weights on the same machine)")
    differ = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
    return (f"{path} holds a finished model of another configuration (differs in: {', '.join(differ)}); "
            "this run trains from scratch and replaces it when it finishes")


def save_model(model: nn.Module, path: str | Path, *, meta: dict | None = None, history: list | None = None) -> None:
    """The deployable artefact: weights + the config that rebuilds the model (:func:`load_model`)."""
    checkpoint.save_atomic(
        {"model_config": model.config, "state_dict": model.state_dict(), "meta": meta or {}, "history": history or []},
        path,
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model (single network or ensemble) saved by :func:`save_model`, in eval mode, on ``device``
    (``auto``: CUDA when present)."""
    state = checkpoint.load(path)
    model = model_from_config(state["model_config"])
    model.load_state_dict(state["state_dict"])
    return model.to(resolve_device(device)).eval()
