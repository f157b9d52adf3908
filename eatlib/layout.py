"""Where the pipeline's per-seed results live (paths only; see the results layout in the team notes).

    results/models/<arch>/<defense>/seed<k>.pt      trained models
    results/metrics/<arch>/<defense>/seed<k>.json   attack documents
    results/summary/<arch>/<defense>/seed<k>.json   the few numbers DVC shows
    results/readings/models/<arch>/<reading>/seed<k>.pt, results/readings/metrics/<arch>/<reading>/seed<k>.json
                                                    the same for the readings of EAT (`make verdict-grid`)
    results/readings/{models,metrics}/<arch>/<reading>/pgd_at_matched/seed<k>.{pt,json}
                                                    PGD-AT given that reading's compute (readings.matched)

Inference defenses and single-seed defenses have one document, at the top-level ``seed``. This module imports
nothing of eatlib, so the pipeline, the report and the summary can all share it.
"""

from __future__ import annotations

import re
from pathlib import Path

SEED_FILE = re.compile(r"seed(\d+)")   # the stem of a per-seed file: seed0, seed1, ...
# The folder of PGD-AT at a reading's compute: eatlib.params.MATCHED, spelled here since this module imports nothing
# of eatlib (tests/test_readings.py checks that the two agree).
MATCHED = "pgd_at_matched"


def seed_name(seed: int) -> str:
    """``"seed3"``: the stem of seed 3's files."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"a training seed is a non-negative integer, got {seed!r}")
    return f"seed{seed}"


def seed_of(path: str | Path) -> int | None:
    """The seed a per-seed file is named after (``.../seed3.json`` -> 3), or None for any other name."""
    match = SEED_FILE.fullmatch(Path(path).stem)
    return int(match[1]) if match else None


def model_path(arch: str, defense: str, results: str | Path = "results", seed: int = 0) -> Path:
    """Where the train stage puts a trained model: ``results/models/<arch>/<defense>/seed<k>.pt``."""
    return Path(results) / "models" / arch / defense / f"{seed_name(seed)}.pt"


def metrics_path(arch: str, defense: str, results: str | Path = "results", seed: int = 0) -> Path:
    """Where the attack stage puts its document: ``results/metrics/<arch>/<defense>/seed<k>.json``."""
    return Path(results) / "metrics" / arch / defense / f"{seed_name(seed)}.json"


def summary_path(arch: str, defense: str, results: str | Path = "results", seed: int = 0) -> Path:
    """Where the summary of that document goes: ``results/summary/<arch>/<defense>/seed<k>.json``."""
    return Path(results) / "summary" / arch / defense / f"{seed_name(seed)}.json"


def pretrained_path(arch: str, results: str | Path = "results") -> Path:
    """The clean network every trained defense of ``arch`` starts from, whatever its seed (on glyphs the stand-in
    for the paper's ImageNet weights, the same for every run): ``results/pretrained/<arch>.pt``."""
    return Path(results) / "pretrained" / f"{arch}.pt"


def reading_model_path(arch: str, reading: str, results: str | Path = "results", seed: int = 0) -> Path:
    """Where the reading stage puts reading ``reading`` of EAT:
    ``results/readings/models/<arch>/<reading>/seed<k>.pt``."""
    return Path(results) / "readings" / "models" / arch / reading / f"{seed_name(seed)}.pt"


def reading_metrics_path(arch: str, reading: str, results: str | Path = "results", seed: int = 0) -> Path:
    """Its attack document: ``results/readings/metrics/<arch>/<reading>/seed<k>.json``."""
    return Path(results) / "readings" / "metrics" / arch / reading / f"{seed_name(seed)}.json"


def reading_matched_model_path(arch: str, reading: str, results: str | Path = "results", seed: int = 0) -> Path:
    """PGD-AT given reading ``reading``'s compute of seed ``seed``:
    ``results/readings/models/<arch>/<reading>/pgd_at_matched/seed<k>.pt``."""
    return reading_model_path(arch, reading, results, seed).parent / MATCHED / f"{seed_name(seed)}.pt"


def reading_matched_metrics_path(arch: str, reading: str, results: str | Path = "results", seed: int = 0) -> Path:
    """Its attack document: ``results/readings/metrics/<arch>/<reading>/pgd_at_matched/seed<k>.json``."""
    return reading_metrics_path(arch, reading, results, seed).parent / MATCHED / f"{seed_name(seed)}.json"
