"""Atomic checkpoint and JSON writes, and safe loading.

Every file a run writes goes through :func:`eatlib.atomic.write_atomic`, so a reader (or a resumed run) never sees
half a file, and a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from eatlib.atomic import write_atomic


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read back (truncated, corrupted or not a checkpoint)."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically. ``obj`` should hold only tensors, dicts, lists and plain values,
    so that :func:`load` can read it with ``weights_only=True``."""
    write_atomic(path, lambda handle: torch.save(obj, handle))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: a file carrying pickled code is refused, not executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train the model first (eat train / dvc repro)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated, corrupted or unsafe files
        raise CheckpointError(
            f"cannot load checkpoint {path}: {type(error).__name__}: {str(error).splitlines()[0]}. The file is "
            "truncated, corrupted or carries pickled code (refused by weights_only=True); delete it to retrain, "
            "or resume from an earlier checkpoint."
        ) from error


def write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
